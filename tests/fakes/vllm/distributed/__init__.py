"""Fake ``vllm.distributed`` (see ``tests/fakes/vllm``)."""
