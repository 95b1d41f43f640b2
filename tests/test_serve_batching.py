"""The replica's model steps (deployments.BatchedBackend) without Ray: a request that finds its
step idle runs at once; requests that overlap share model calls, each getting its own answers."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from outfitter.platform.serve import core
from outfitter.platform.serve.deployments import BatchedBackend


@pytest.fixture
def backend(monkeypatch):
    """A backend over a fake version whose model calls are recorded (sizes) and take 30 ms."""
    calls: list[int] = []
    lock = threading.Lock()

    def score_outfits(state, outfits):
        with lock:
            calls.append(len(outfits))
        time.sleep(0.03)
        return np.array([float(sum(o)) for o in outfits])

    def retrieve(state, contexts, texts, categories, k, excludes):
        with lock:
            calls.append(len(contexts))
        time.sleep(0.03)
        pairs = zip(texts, categories, strict=True)
        return [([f"{t}-{j}" for j in range(k)], {"category": c}) for t, c in pairs]

    # @serve.batch reads the replica's max_ongoing_requests when its queue starts
    from ray import serve

    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=48))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)
    monkeypatch.setattr(core, "score_outfits", score_outfits)
    monkeypatch.setattr(core, "retrieve", retrieve)
    b = BatchedBackend("unused", None, "cpu", {})
    b.state = SimpleNamespace(version="v7")
    return b, calls


def test_a_lone_request_runs_at_once(backend):
    b, calls = backend

    async def queued(request):
        raise AssertionError("a lone request went through the batch queue")

    b._score = queued
    version, probs = asyncio.run(b.score([[1, 2], [3, 4, 5]]))
    assert version == "v7" and probs.tolist() == [3.0, 12.0]
    assert calls == [2]
    assert b.busy == {"encode": 0, "score": 0, "retrieve": 0}


def test_overlapping_requests_share_model_calls_and_get_their_own_answers(backend):
    b, calls = backend
    requests = [[[i, j] for j in range(i % 3 + 1)] for i in range(12)]

    async def all_at_once():
        return await asyncio.gather(*(b.score(r) for r in requests))

    answers = asyncio.run(all_at_once())
    for request, (version, probs) in zip(requests, answers, strict=True):
        assert version == "v7" and probs.tolist() == [float(sum(o)) for o in request]
    # the first request found the step idle and ran alone; the other 11 waited in the batch
    # queue and went in far fewer calls than one each
    assert calls[0] == len(requests[0]) and len(calls) < len(requests) / 2, calls
    assert sum(calls) == sum(len(r) for r in requests)
    assert b.busy["score"] == 0


def test_batched_retrieval_cuts_each_request_to_its_own_k(backend):
    b, calls = backend

    async def two():
        return await asyncio.gather(
            b.retrieve([["a"]], ["white sneakers"], [3], 2, [set()]),
            b.retrieve([["b"], ["c"]], ["red bag", "blue hat"], [4, None], 5, [set(), set()]),
            b.retrieve([["d"]], ["black boots"], [5], 1, [set()]),
        )

    first, second, third = asyncio.run(two())
    assert first == ("v7", [(["white sneakers-0", "white sneakers-1"], {"category": 3})])
    assert [len(h) for h, _ in second[1]] == [5, 5] and second[1][1][1] == {"category": None}
    assert third == ("v7", [(["black boots-0"], {"category": 5})])
    assert len(calls) == 2, calls  # the first alone, the next two in one call
