"""The SGLang adapter's tests run in .venv-sglang (scripts/setup_sglang_env.sh); elsewhere they
skip. Virtual CUDA fixtures are the ones of tests/cuda."""

from tests.cuda.conftest import link, vcuda  # noqa: F401
