"""Fake ``vllm.distributed.parallel_state``: the teardown functions record that they were called."""

CALLS: list[str] = []


def destroy_model_parallel() -> None:
    CALLS.append("destroy_model_parallel")


def destroy_distributed_environment() -> None:
    CALLS.append("destroy_distributed_environment")
