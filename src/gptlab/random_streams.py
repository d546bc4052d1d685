"""Common random numbers: every parameter's initial values from a stream of its own (train.json `random_streams`).

With the default initialisation one generator is drawn from in module order, so an intervention that adds,
removes or reshapes a parameter (qkv_bias, another width of one layer) shifts the initial values of every
parameter drawn after it: a comparison then mixes the intervention with another initialisation. With
`random_streams: true` each parameter is drawn from a generator seeded by (run seed, parameter name), with the
distribution its module's default initialiser uses, so every parameter the intervention does not touch starts
bit-identical. Dropout then draws from a stream of its own (the global torch generator re-seeded from
(run seed, "dropout")), so how many numbers the initialisation used does not move the dropout masks either.

Distributions, per module type (PyTorch's `reset_parameters`, as the book's model gets them):
nn.Linear weight kaiming_uniform(a=sqrt(5)), i.e. uniform(+-1/sqrt(fan_in)), bias uniform(+-1/sqrt(fan_in));
nn.Embedding normal(0, 1); nn.LayerNorm weight 1, bias 0 (the book's scale and shift). gptlab's fused
query/key/value projection has the fan-in of each of the book's three, so one draw has their distribution.
With model.json `init: "gpt2"`: normal(0, 0.02) weights and embeddings (residual projections scaled by
1/sqrt(2 n_layers)), zero biases, unit LayerNorms. Mixture-of-experts routers and experts are Linear layers
and are covered by name like every other. Vocabulary padding rows stay zero.

Off by default: the users' curves depend on the one-generator order (see init_like_book in weights.py).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from gptlab.model import GPT

DROPOUT_STREAM = "dropout"


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (run seed, stream name): stable across machines, Python and torch versions."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name))


@torch.no_grad()
def init_with_streams(model: GPT, seed: int) -> None:
    """Re-initialise every parameter of a freshly built (CPU) model from its own stream, then seed dropout's."""
    config = model.config
    gpt2 = config.init == "gpt2"
    residual_std = 0.02 / math.sqrt(2 * config.n_layers)
    tied = config.tie_weights
    for module_name, module in model.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if tied and module is model.lm_head:
                continue  # the head is the token embedding, initialised as the embedding
            generator = stream(seed, name)
            if isinstance(module, nn.LayerNorm):
                parameter.fill_(1.0 if parameter_name == "weight" else 0.0)
            elif isinstance(module, nn.Embedding):
                parameter.normal_(0.0, 0.02 if gpt2 else 1.0, generator=generator)
            elif isinstance(module, nn.Linear) and gpt2:
                if parameter_name == "bias":
                    parameter.zero_()
                else:
                    parameter.normal_(
                        0.0, residual_std if module_name.endswith("c_proj") else 0.02, generator=generator
                    )
            elif isinstance(module, nn.Linear):
                bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform(a=sqrt(5)) and the bias alike
                parameter.uniform_(-bound, bound, generator=generator)
            else:
                raise TypeError(f"random_streams: no default initialiser known for {name} ({type(module).__name__})")
    model.wte.weight[config.vocab_size :].zero_()
    if not tied:
        model.lm_head.weight[config.vocab_size :].zero_()
    torch.manual_seed(stream_seed(seed, DROPOUT_STREAM))
