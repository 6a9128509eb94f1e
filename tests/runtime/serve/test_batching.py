"""DynamicBatcher on a real event loop and a real worker thread: cancelled requests never run, large requests run as
calls of at most ``max_batch`` so another batcher sharing the thread gets in between.

The backend here is a plain function that records its calls; a threading.Event holds the worker thread where a test
needs the queue to fill up first (no sleeps decide the order).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from runtime.serve.batching import BatchObserver, DynamicBatcher


class Recorder:
    """A run_batch that records each call's items and can hold the worker thread until released."""

    def __init__(self):
        self.calls: list[list] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items):
        self.calls.append(list(items))
        self.entered.set()
        self.release.wait(30)
        return [str(item).upper() for item in items]


def test_a_cancelled_queued_request_leaves_the_queue_unrun_and_is_counted():
    recorder = Recorder()
    cancelled: list[tuple[str, int]] = []
    depths: list[int] = []  # items admitted and waiting, on every change (the ruclip_tiny_queue_items gauge)
    observer = BatchObserver(cancelled=lambda kind, items: cancelled.append((kind, items)),
                             queue_depth=lambda kind, items: depths.append(items))

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher("image", recorder, executor, max_batch=2, max_wait_s=0, observer=observer)
            batcher.start()
            recorder.release.clear()
            first = asyncio.ensure_future(batcher.submit(batcher.admit(2), ["a", "b"]))
            await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 10)
            second = asyncio.ensure_future(batcher.submit(batcher.admit(3), ["c", "d", "e"]))
            third = asyncio.ensure_future(batcher.submit(batcher.admit(1), ["f"]))
            await asyncio.sleep(0)  # both reach their queue places
            assert depths[-1] == 4
            second.cancel()  # what the server does when the client of this request disconnects
            await asyncio.wait([second])
            queued_after_cancel = depths[-1]
            recorder.release.set()
            results = await asyncio.gather(first, third)
            await batcher.close()
            return results, queued_after_cancel

    results, queued_after_cancel = asyncio.run(scenario())
    assert results == [["A", "B"], ["F"]]
    assert queued_after_cancel == 1  # the cancelled request's 3 items left the queue at once
    assert recorder.calls == [["a", "b"], ["f"]]  # c, d, e never reached the backend
    assert cancelled == [("image", 3)]


def test_a_large_request_runs_in_calls_of_max_batch_and_another_batcher_gets_in_between():
    order: list[str] = []
    images_entered = threading.Event()
    release_images = threading.Event()

    def run_images(items):
        order.append("image:" + "".join(items))
        images_entered.set()
        release_images.wait(30)
        return list(items)

    def run_texts(items):
        order.append("text:" + "".join(items))
        return list(items)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:  # the server's one inference thread, shared by both batchers
            images = DynamicBatcher("image", run_images, executor, max_batch=2, max_wait_s=0)
            texts = DynamicBatcher("text", run_texts, executor, max_batch=64, max_wait_s=0)
            images.start()
            texts.start()
            big = asyncio.ensure_future(images.submit(images.admit(6), list("abcdef")))
            await asyncio.get_running_loop().run_in_executor(None, images_entered.wait, 10)
            text = asyncio.ensure_future(texts.submit(texts.admit(1), ["t"]))
            await asyncio.sleep(0.05)  # the text call is queued behind the image call in progress
            release_images.set()
            results = await asyncio.gather(big, text)
            await images.close()
            await texts.close()
            return results

    results = asyncio.run(scenario())
    assert results == [list("abcdef"), ["t"]]
    # The text ran after the first image call, not after all six images.
    assert order == ["image:ab", "text:t", "image:cd", "image:ef"]


def test_calls_left_of_a_batch_whose_requests_were_all_cancelled_are_dropped():
    recorder = Recorder()
    cancelled: list[tuple[str, int]] = []
    depths: list[int] = []  # items admitted and waiting, on every change (the ruclip_tiny_queue_items gauge)
    observer = BatchObserver(cancelled=lambda kind, items: cancelled.append((kind, items)),
                             queue_depth=lambda kind, items: depths.append(items))

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher("image", recorder, executor, max_batch=1, max_wait_s=0, observer=observer)
            batcher.start()
            recorder.release.clear()
            request = asyncio.ensure_future(batcher.submit(batcher.admit(8), list("abcdefgh")))
            await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 10)
            request.cancel()  # its client left during the first of its 8 calls
            await asyncio.wait([request])
            recorder.release.set()
            await batcher.close()

    asyncio.run(scenario())
    assert recorder.calls == [["a"]]
    assert cancelled == [("image", 7)]
