"""The token oracle from the served model: its vocabulary, its EOS ids (never drawn).

Sampled ids are read back from virtual tensors (`.tolist()` in SGLang's output processing) and
come from Revati's token oracle. After `ModelRunner.load_model` (an AFTER hook through SGLang's
HookRegistry, in each scheduler process) the oracle draws from the model's vocabulary, leaves
out the EOS ids of its config and generation config (`ModelConfig.hf_eos_token_id`), and is
seeded with the server's `--random-seed`: the detokenizer gets ids the tokenizer can decode,
and every request runs to its `max_new_tokens` (the workload owns output lengths).
"""

from __future__ import annotations

from typing import Any

TARGET = "sglang.srt.model_executor.model_runner.ModelRunner.load_model"


def set_for(model_config: Any, seed: int | None) -> None:
    from revati.adapters import cuda

    hf = model_config.hf_config
    text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    vocab = int(getattr(model_config, "vocab_size", 0) or text.vocab_size)
    eos = sorted(int(e) for e in (getattr(model_config, "hf_eos_token_id", None) or ())
                 if 0 <= int(e) < vocab)
    cuda.set_oracle(cuda.TokenOracle(vocab, eos, seed=seed or 0))


def _after_load_model(result: Any, runner: Any, *args: Any, **kwargs: Any) -> Any:
    seed = getattr(getattr(runner, "server_args", None), "random_seed", None)
    set_for(runner.model_config, seed)
    return result


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, _after_load_model, HookType.AFTER)
