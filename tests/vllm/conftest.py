"""The vLLM adapter's tests run in .venv-vllm (scripts/setup_vllm_env.sh); elsewhere they skip.
Virtual CUDA fixtures are the ones of tests/cuda."""

from tests.cuda.conftest import link, vcuda  # noqa: F401
