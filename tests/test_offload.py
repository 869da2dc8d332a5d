"""Block offload for inference: identical outputs, one block's device copy at a time, clean bookkeeping, errors."""

from __future__ import annotations

import pytest
import torch

from scail_lab.model.dit import SCAILDiT
from scail_lab.model.offload import BlockOffload
from tests.conftest import make_inputs, randomize_, tiny_config
from tests.test_pipeline import make_example, make_pipeline


def model_and_inputs(num_layers: int = 4):
    model = randomize_(SCAILDiT(tiny_config(num_layers=num_layers)), seed=3, std=0.05).eval()
    return model, make_inputs(seed=1)


@pytest.mark.parametrize("num_blocks, prefetch", [(1, True), (3, True), (4, True), (3, False)])
def test_offloaded_forward_equals_the_resident_forward(num_blocks, prefetch):
    model, inputs = model_and_inputs()
    with torch.no_grad():
        expected = model(inputs)
    offload = BlockOffload(model, "cpu", num_blocks, prefetch=prefetch)
    storage_ptrs = {i: {n: t.data_ptr() for n, t in offload.storage[i].items()} for i in offload.indices}
    seen = []  # (block index, blocks holding a device copy) as each block's forward starts
    spies = [block.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, sorted(offload.loaded))))
             for i, block in enumerate(model.blocks)]  # fmt: skip
    with torch.no_grad():
        out = model(inputs)
    for spy in spies:
        spy.remove()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert offload.indices == list(range(4 - num_blocks, 4))
    for index, loaded in seen:
        if index in offload.indices:
            nxt = [j for j in offload.indices if j > index][:1] if prefetch else []
            assert loaded == [index, *nxt], (index, loaded)  # itself + at most the prefetched next block
        elif prefetch and index == offload.indices[0] - 1:
            assert loaded == [offload.indices[0]]  # the last resident block starts the first copy
        else:
            assert loaded == []
    assert offload.loaded == {} and offload.stats["copies"] == num_blocks
    assert offload.stats["max_loaded"] == (min(2, num_blocks) if prefetch else 1)
    for i in offload.indices:  # after the forward every offloaded tensor points back at its CPU storage
        block = dict(model.blocks[i].named_parameters())
        assert {n: block[n].data_ptr() for n in storage_ptrs[i]} == storage_ptrs[i]


def test_offload_refuses_training_and_bad_counts():
    model, inputs = model_and_inputs()
    with pytest.raises(ValueError, match=r"offload_blocks must be in \[1, 4\].*got 5"):
        BlockOffload(model, "cpu", 5)
    with pytest.raises(ValueError, match=r"offload_blocks must be in \[1, 4\].*got 0"):
        BlockOffload(model, "cpu", 0)
    BlockOffload(model, "cpu", 2)
    with pytest.raises(RuntimeError, match="inference"):
        model(inputs)  # grad enabled


def test_the_pipeline_with_offloaded_blocks_gives_the_same_video():
    example = make_example(frames=9)
    plain = make_pipeline()(example, seed=4).video
    pipe = make_pipeline(offload_blocks=2)
    assert pipe.block_offload is not None and pipe.block_offload.indices == [0, 1]
    torch.testing.assert_close(pipe(example, seed=4).video, plain, rtol=0, atol=0)
    assert pipe.block_offload.stats["copies"] == 2 * 3  # 2 blocks x 3 steps x 1 segment
    with pytest.raises(ValueError, match="offload_blocks must be >= 0"):
        make_pipeline(offload_blocks=-1)
