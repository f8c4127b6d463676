"""The vLLM requests of one call, as the in-process engine and the data parallel workers both send them:
prompt groups (:func:`group_requests`), their chunks (:func:`chunk_groups`), one engine call per chunk
(:func:`run_groups`) and the engine's shutdown (:func:`shutdown_engine`).

:mod:`segattr_utils.llm.generation` (``VLLMGenerator``, one engine in its process) and
:mod:`segattr_utils.llm.vllm_worker` (one engine per worker process) import this module; it imports
neither, so each of them loads without the other. vLLM itself is imported only inside the functions
that drive an engine.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

#: Requests per engine per ``LLM.generate`` call when the profile does not say
#: (``generation.vllm_chunk_requests``).
DEFAULT_CHUNK_REQUESTS = 2048


def check_chunk_requests(value) -> int:
    """``generation.vllm_chunk_requests`` as a positive integer, or a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"generation.vllm_chunk_requests must be a positive integer, got {value!r}")
    return value


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """The ids of a templated prompt as the Hugging Face paths encode it (:func:`~segattr_utils.llm.generation.left_padded_batch`):
    ``add_special_tokens=False``, since the chat template already writes BOS. vLLM 0.30.0 would encode a
    text prompt with ``add_special_tokens=True`` (``BaseRenderer.default_cmpl_tok_params``) and so give
    R1-Distill's tokenizer (``add_bos_token: true``) a second BOS."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def group_requests(tokenizer, prompts: Sequence[str], params: Sequence[dict]) -> list[dict]:
    """The requests of one call grouped by prompt, in order of first appearance: ``{"prompt": text,
    "prompt_token_ids": ids, "requests": [{"index": position in the call, "params": SamplingParams
    kwargs}, ...]}``. Each distinct prompt is encoded once (:func:`prompt_token_ids`), its ids kept as a
    compact ``array('i')`` (a list of Python ints takes ~9x the memory) until its chunk goes to an engine
    (:func:`sendable`)."""
    groups: dict[str, dict] = {}
    for index, (text, kwargs) in enumerate(zip(prompts, params)):
        if text not in groups:
            ids = array("i", prompt_token_ids(tokenizer, text))  # 4 bytes a token until its chunk is sent
            groups[text] = {"prompt": text, "prompt_token_ids": ids, "requests": []}
        groups[text]["requests"].append({"index": index, "params": kwargs})
    return list(groups.values())


def sendable(groups: Sequence[dict]) -> list[dict]:
    """``groups`` with their prompt ids as lists of ints, as vLLM's token prompts and JSON take them (one
    list per group: its requests share it)."""
    return [{**group, "prompt_token_ids": list(group["prompt_token_ids"])} for group in groups]


def group_work(group: dict) -> float:
    """Expected work of a prompt group, to balance the engines: its prompt (prefilled once, shared by
    prefix caching) and the most tokens each of its requests may decode."""
    return len(group["prompt_token_ids"]) + sum(r["params"]["max_tokens"] for r in group["requests"])


def chunk_groups(groups: Sequence[dict], chunk_requests: int) -> list[list[dict]]:
    """``groups`` (:func:`group_requests`) cut, in order, into chunks of at most ``chunk_requests``
    requests. A chunk holds whole prompt groups where they fit (the samples of a prompt share its prefix
    cache within one engine call); a group of more than ``chunk_requests`` requests is split into pieces
    that fill chunks of their own."""
    check_chunk_requests(chunk_requests)
    chunks: list[list[dict]] = []
    current: list[dict] = []
    size = 0
    for group in groups:
        requests = group["requests"]
        if len(requests) > chunk_requests:
            if current:
                chunks.append(current)
                current, size = [], 0
            for start in range(0, len(requests), chunk_requests):
                chunks.append([{**group, "requests": requests[start : start + chunk_requests]}])
            continue
        if size + len(requests) > chunk_requests:
            chunks.append(current)
            current, size = [], 0
        current.append(group)
        size += len(requests)
    if current:
        chunks.append(current)
    return chunks


def run_groups(llm, groups: Sequence[dict]) -> list[dict]:
    """Every request of ``groups`` (one chunk) in ONE ``llm.generate`` call, each as a token prompt
    ``{"prompt_token_ids": ids, "prompt": text}`` (vLLM 0.30.0's ``TokensPrompt``: the ids are used as
    they are, the text spares the detokenisation) with its own ``SamplingParams``.

    The requests go to the engine in call order (their ``index``), as the caller listed them. Returns
    ``{"index", "text", "n_tokens", "finished"}`` per request, in that order. The in-process engine and
    every data parallel worker run this function, so they send the same inputs."""
    from vllm import SamplingParams

    groups = sendable(groups)
    requests = sorted(
        ((group, request) for group in groups for request in group["requests"]), key=lambda gr: gr[1]["index"]
    )
    outputs = llm.generate(
        [{"prompt_token_ids": g["prompt_token_ids"], "prompt": g["prompt"]} for g, _ in requests],
        [SamplingParams(**r["params"]) for _, r in requests],
        use_tqdm=False,
    )
    results = []
    for (_, request), out in zip(requests, outputs):
        completion = out.outputs[0]
        results.append(
            {
                "index": request["index"],
                "text": completion.text,
                "n_tokens": len(completion.token_ids),
                "finished": completion.finish_reason == "stop",
            }
        )
    return results


def shutdown_engine(llm) -> None:
    """Shut a ``vllm.LLM`` down and free its GPU memory: stop the engine core (its worker processes in
    vLLM's V1 engine) and tear down vLLM's model-parallel groups and distributed environment. The caller
    then drops its reference and calls :func:`~segattr_utils.llm.generation.release_gpu_memory`."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(engine_core, "shutdown", None)
    if shutdown is not None:
        shutdown()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:  # an older or newer vLLM without these helpers: collecting the engine must do
        pass
    else:
        destroy_model_parallel()
        destroy_distributed_environment()
