"""Explanations as jobs: queued (Redis Streams, or in-process), run by workers, nothing lost.

spec (what a job is) -> payload (how it is stored) -> queue, redis_queue, memory_queue (where)
-> runner (how one is computed) -> worker (the claim/run/store loop) -> supervisor (processes).
"""
