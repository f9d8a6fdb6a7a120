"""``torch.compile`` for a network that trains: its repeated blocks, compiled in place.

Regional compilation (PyTorch's recipe for transformers): every element of the network's
``nn.ModuleList`` (GPT-2's ``transformer.h``, Llama's ``layers``) is compiled with
``nn.Module.compile``, so the blocks share one compiled graph (compile time is one block's) and
every path through the network uses it: ``forward``, ``hidden_states`` (the chunked loss),
generation. Parameter names, and so checkpoints, are unchanged. A network without a module list
is compiled whole.
"""

from __future__ import annotations

from torch import nn


def compile_network(net: nn.Module) -> nn.Module:
    """Compile ``net``'s repeated blocks in place (all of it when it has none); return it."""
    blocks = [b for m in net.modules() if isinstance(m, nn.ModuleList) for b in m]
    for block in blocks:
        block.compile()
    if not blocks:
        net.compile()
    return net
