"""The paged KV pool: K and V of every layer, preallocated once, addressed by (block, offset).

Layout: ``k[layer]`` is ``[num_blocks, block_size, Hkv, D]``; slot ``block * block_size + offset``
is one token's row in the flat view ``[num_blocks * block_size, Hkv, D]``. The pool is allocated
when the engine starts and never grows; which blocks belong to whom is the ``BlockAllocator``'s
business. This module also converts one sequence's blocks to and from the contiguous per-layer
``[L, Hkv, D]`` tensors of ``SequenceKV``: the form in which KV leaves and enters an engine, and
in which a swapped-out sequence waits in host memory (``read_to_host``) while its blocks serve
others.

Shape legend: N blocks, B block size, L tokens of one sequence, Hkv KV heads, D head dim.
"""

from __future__ import annotations

import torch

from shared.models.layers.attention import SequenceKV


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [layers, N, B, Hkv, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        # Views made once: a decode step asks for them in every layer, and each view op costs ~1 us.
        self._slots = [(self.k[i].flatten(0, 1), self.v[i].flatten(0, 1)) for i in range(num_layers)]
        self._rows = [(self.k[i].flatten(1), self.v[i].flatten(1)) for i in range(num_layers)]  # [N, B*Hkv*D]
        self._token_shape = (-1, num_kv_heads, head_dim)

    def slots(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat views [N * B, Hkv, D] of one layer's K and V."""
        return self._slots[layer]

    def gather(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [n * B, Hkv, D] of blocks [n], in order (index_select on whole blocks: a row copy)."""
        k_rows, v_rows = self._rows[layer]
        k = k_rows.index_select(0, blocks).view(self._token_shape)
        v = v_rows.index_select(0, blocks).view(self._token_shape)
        return k, v

    def slot_ids(self, block_table: list[int], start: int, end: int) -> list[int]:
        """Slots of token indices [start, end) of a sequence."""
        b = self.block_size
        return [block_table[i // b] * b + i % b for i in range(start, end)]

    # ----- one sequence, contiguous ----------------------------------------------------------------
    def read_layer(
        self, block_table: list[int], length: int, layer: int, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [length - start, Hkv, D] of tokens [start, length) of a sequence, copied out."""
        first = start // self.block_size
        blocks = torch.tensor(block_table[first : -(-length // self.block_size)], device=self.device)
        k, v = self.gather(layer, blocks)
        skip = first * self.block_size
        return k[start - skip : length - skip], v[start - skip : length - skip]  # [L, Hkv, D]

    def write_layer(
        self, block_table: list[int], layer: int, k: torch.Tensor, v: torch.Tensor, start: int = 0
    ) -> None:
        """Store K, V [n, Hkv, D] as tokens [start, start + n) of a sequence whose blocks cover them."""
        end = start + k.shape[0]
        if len(block_table) * self.block_size < end:
            raise ValueError(f"{len(block_table)} blocks cannot hold {end} tokens")
        slots = torch.tensor(self.slot_ids(block_table, start, end), device=self.device)
        ks, vs = self.slots(layer)
        # From pinned host memory the copy runs on the stream, ordered before the index_copy_.
        ks.index_copy_(0, slots, k.to(device=self.device, dtype=self.dtype, non_blocking=True))
        vs.index_copy_(0, slots, v.to(device=self.device, dtype=self.dtype, non_blocking=True))

    def read(self, block_table: list[int], length: int) -> SequenceKV:
        kv = SequenceKV(self.num_layers)
        for layer in range(self.num_layers):
            kv.keys[layer], kv.values[layer] = self.read_layer(block_table, length, layer)
        return kv

    def read_to_host(self, block_table: list[int], length: int) -> SequenceKV:
        """Like ``read``, but into CPU memory, so that freeing the blocks frees device memory.

        On a GPU the host tensors are pinned and filled without waiting: the copies are queued on
        the stream before anything that could overwrite the blocks, and ``write`` (queued after
        them too) is the only reader.
        """
        pin = self.device.type == "cuda"
        kv = SequenceKV(self.num_layers)
        for layer in range(self.num_layers):
            k, v = self.read_layer(block_table, length, layer)  # [L, Hkv, D] on the pool's device
            kv.keys[layer] = torch.empty(k.shape, dtype=k.dtype, pin_memory=pin).copy_(k, non_blocking=pin)
            kv.values[layer] = torch.empty(v.shape, dtype=v.dtype, pin_memory=pin).copy_(v, non_blocking=pin)
        return kv

    def write(self, block_table: list[int], kv: SequenceKV) -> None:
        for layer in range(self.num_layers):
            k, v = kv.keys[layer], kv.values[layer]
            if k is None or v is None:
                raise ValueError(f"layer {layer} of the imported KV is missing")
            self.write_layer(block_table, layer, k, v)
