"""The threaded pipeline: order, overlap of the stages, error propagation and clean shutdown."""

from __future__ import annotations

import threading

import pytest

from efficientdet.pipeline import BackgroundSink, Prefetcher, batched, detection_stages, run_pipeline


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("pipeline-")}


@pytest.mark.parametrize("threaded", [True, False])
def test_order_and_results(threaded):
    done = []
    n = run_pipeline(range(50), infer=lambda p: p * 10, prepare=lambda x: x + 1,
                     finish=lambda item, r: done.append((item, r)), threaded=threaded, depth=3)
    assert n == 50 and done == [(i, (i + 1) * 10) for i in range(50)]
    assert not _threads()


def test_stages_overlap():
    """While the network runs item k, the reader prepares k+1 and the writer finishes k-1 (events, no sleeps)."""
    prepared = {i: threading.Event() for i in range(6)}
    finished = {i: threading.Event() for i in range(6)}
    overlap = []

    def prepare(i):
        prepared[i].set()
        return i

    def infer(i):
        # inside the network call of item i: item i+1 gets prepared and item i-1 finished meanwhile
        ahead = i == 5 or prepared[i + 1].wait(5)
        behind = i == 0 or finished[i - 1].wait(5)
        overlap.append(ahead and behind)
        return i

    run_pipeline(range(6), infer, prepare, lambda i, r: finished[i].set())
    assert overlap == [True] * 6


def test_reader_error_propagates_after_earlier_items_are_finished():
    done = []

    def items():
        yield from range(5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_pipeline(items(), infer=lambda x: x, finish=lambda i, r: done.append(i))
    assert done == [0, 1, 2, 3, 4]
    assert not _threads()


def test_writer_error_propagates_and_nothing_deadlocks():
    def finish(i, r):
        if i == 3:
            raise ValueError("cannot write")

    with pytest.raises(ValueError, match="cannot write"):
        run_pipeline(range(1000), infer=lambda x: x, finish=finish, depth=1)
    assert not _threads()


def test_interrupt_in_network_stops_reader_and_finishes_handed_over_items():
    done = []
    closed = threading.Event()

    def items():
        try:
            yield from range(10_000)
        finally:
            closed.set()  # the source is closed (in the reader thread)

    def infer(x):
        if x == 7:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(items(), infer, finish=lambda i, r: done.append(i))
    assert done == list(range(7)) and closed.is_set()
    assert not _threads()


def test_prefetcher_and_sink_directly():
    with Prefetcher(iter(range(5)), lambda x: -x, depth=1) as pre:
        assert list(pre) == [(i, -i) for i in range(5)]
    got = []
    sink = BackgroundSink(lambda a, b: got.append(a + b))
    for i in range(4):
        sink.put(i, 100)
    sink.close()
    assert got == [100, 101, 102, 103]
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_detection_stages_for_plain_callables():
    calls = []

    def detector(images, batch_size=8):
        calls.append((list(images), batch_size))
        return [f"det{x}" for x in images]

    prepare, infer = detection_stages(detector)
    assert infer(prepare(["a", "b"])) == ["deta", "detb"] and calls == [(["a", "b"], 2)]


def test_folder_of_still_images(tmp_path, photo_files, detector):
    """The same machinery serves a folder: load + preprocess in the reader, draw + save in the writer."""
    from efficientdet.images import load_image
    from efficientdet.visualize import draw_detections

    prepare, infer = detection_stages(detector)
    saved = []

    def finish(paths, dets):
        for path, det in zip(paths, dets):
            draw_detections(load_image(path), det).save(tmp_path / f"out_{path.stem}.png")
            saved.append((path.name, det.to_coco(path.name)))

    n = run_pipeline(batched(sorted(photo_files), 1), infer, lambda paths: prepare([load_image(p) for p in paths]),
                     finish)
    assert n == 3 and [name for name, _ in saved] == sorted(p.name for p in photo_files)
    for (name, records), path in zip(saved, sorted(photo_files)):
        assert records == detector([load_image(path)])[0].to_coco(name)
        assert (tmp_path / f"out_{path.stem}.png").is_file()
