"""A user's program for transformers' continuous batching, with no call of Revati's own:
`generate_batch` on Llama-tiny's first two layers (random weights), on `cuda`. Options:
`--cuda-graphs`: a small paged cache with CUDA graphs for both paths; `--from-pretrained`: the
model from `from_pretrained` on the bundled config's folder (no weights in it), built on the
CPU and moved with `.to("cuda")`, or with `--device-map` built there (`device_map="cuda"`);
`--tp`: under torchrun, `from_pretrained(tp_plan="auto")` shards it over the ranks' GPUs.
Prints, as JSON, each request's generated ids, the vocabulary and EOS id, the layers built,
an MLP weight's type, device and local shape, and how many attention calls Revati's glue
recorded."""

import json
import os
import sys

import torch
from transformers import (
    AutoModelForCausalLM,
    ContinuousBatchingConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from revati.adapters.models import model_dir
from revati.adapters.transformers import calls
from revati.revatid.validate.workload import model_config

EOS = 2

if "--tp" in sys.argv:
    model = AutoModelForCausalLM.from_pretrained(model_dir("Llama-tiny"), num_hidden_layers=2,
                                                 attn_implementation="paged|sdpa",
                                                 tp_plan="auto")
elif "--from-pretrained" in sys.argv:
    on_gpu = {"device_map": "cuda"} if "--device-map" in sys.argv else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir("Llama-tiny"), num_hidden_layers=2,
                                                 attn_implementation="paged|sdpa", **on_gpu)
    model = model if on_gpu else model.to("cuda")
else:
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig.from_dict(model_config("Llama-tiny", 2)))
    model.set_attn_implementation("paged|sdpa")
gen = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=EOS, pad_token_id=0)
small = "--cuda-graphs" in sys.argv or "--tp" in sys.argv
cb = ContinuousBatchingConfig(block_size=32, num_blocks=64, max_batch_tokens=256,
                              use_cuda_graph="--cuda-graphs" in sys.argv) if small else None
out = model.generate_batch([[5, 6, 7], [8, 9, 10, 11, 12], [13]], generation_config=gen,
                           continuous_batching_config=cb, progress_bar=False)
weight = model.model.layers[0].mlp.up_proj.weight
local = weight.to_local() if hasattr(weight, "to_local") else weight
line = json.dumps({"generated": [o.generated_tokens for o in out.values()],
                   "vocab": model.config.vocab_size, "eos": EOS,
                   "layers": len(model.model.layers), "attention_calls": len(calls),
                   "weight": [type(weight).__name__, str(local.device), list(local.shape)]})
# one write of the whole line: under torchrun the ranks share stdout, and print's separate
# write of the newline let their lines run into each other
os.write(sys.stdout.fileno(), (line + "\n").encode())
