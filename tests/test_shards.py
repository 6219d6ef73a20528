"""Sharded training state (kdistill.training.shards) in one process: what a rank writes through
DCP loads back exactly, is checked by digest, and is deleted only where the run can prove it
wrote it. The two-rank paths (resharding, SIGKILL and resume) are in tests/test_fsdp.py."""

import json

import pytest
import torch
from torch import nn

from kdistill.io import manifest
from kdistill.io.tensors import CheckpointError, save_tensors
from kdistill.training import shards


def trained(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(4, 5)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_saved_shards_load_back_into_another_model_exactly(tmp_path):
    model, optimizer = trained(0)
    folder, rest, digests = shards.save_shards(
        tmp_path / "phase.state.safetensors", model, optimizer
    )
    assert sorted(digests) == sorted(p.name for p in folder.iterdir())
    json.dumps(rest)  # what goes into the checkpoint file's JSON: no tensor among it
    other, other_optimizer = trained(1)
    shards.load_shards(folder, digests, other, other_optimizer, rest)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    for index, values in saved["state"].items():
        for name, value in values.items():
            assert torch.equal(value, loaded["state"][index][name])
    assert saved["param_groups"] == loaded["param_groups"]


def test_a_damaged_missing_or_extra_shard_file_is_refused_in_one_line(tmp_path):
    model, optimizer = trained(0)
    folder, rest, digests = shards.save_shards(
        tmp_path / "phase.state.safetensors", model, optimizer
    )
    (file,) = folder.iterdir()
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{file.name} is missing, damaged or foreign"):
        shards.load_shards(folder, digests, model, optimizer, rest)
    file.rename(folder / "shard-00009-model-00001-of-00001.safetensors")
    with pytest.raises(CheckpointError, match="is missing, damaged or foreign"):
        shards.load_shards(folder, digests, model, optimizer, rest)


@pytest.mark.parametrize("name", ["../elsewhere", "phase.state.shards-zz", "other.shards-0a0b0c0d"])
def test_a_checkpoint_naming_any_folder_but_its_own_shards_is_refused(tmp_path, name):
    checkpoint = tmp_path / "phase.state.safetensors"
    with pytest.raises(CheckpointError, match="names no shard folder of its own"):
        shards.shards_folder(checkpoint, {"shards": {"folder": name, "files": {}}})
    assert shards.shards_folder(checkpoint, {}) is None  # a whole checkpoint


def test_only_the_runs_own_shard_folders_and_files_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / manifest.MARKER).write_text("{}")
    checkpoint = run_dir / "checkpoints" / "phase.state.safetensors"
    model, optimizer = trained(0)
    old, _, digests = shards.save_shards(checkpoint, model, optimizer)
    save_tensors(checkpoint, {}, {"shards": {"folder": old.name, "files": digests}})
    assert shards.named_by(checkpoint) == old
    interrupted, _, _ = shards.save_shards(checkpoint, model, optimizer)  # as if killed
    users = checkpoint.with_name("phase.state.shards-0123abcd")  # not the run's: stays
    users.mkdir()
    (users / "shard-00001-model-00001-of-00001.safetensors").write_text("mine")
    (interrupted / "notes.txt").write_text("mine too")  # a stranger inside one of ours
    new, _, _ = shards.save_shards(checkpoint, model, optimizer)
    shards.remove_shards(checkpoint, keep=new, named=old)
    assert not old.exists() and new.is_dir() and users.is_dir()
    assert [p.name for p in interrupted.iterdir()] == ["notes.txt"]


def test_remove_shards_outside_a_run_directory_removes_only_the_named_folder(tmp_path):
    checkpoint = tmp_path / "state.safetensors"
    model, optimizer = trained(0)
    named, _, _ = shards.save_shards(checkpoint, model, optimizer)
    other, _, _ = shards.save_shards(checkpoint, model, optimizer)
    shards.remove_shards(checkpoint, named=named)
    assert not named.exists() and other.is_dir()  # no list proves ``other`` is ours


def test_a_full_disk_leaves_the_previous_shards_and_says_so_in_one_line(tmp_path, monkeypatch):
    import errno

    from torch.distributed.checkpoint import filesystem

    from kdistill.errors import DiskFullError

    checkpoint = tmp_path / "phase.state.safetensors"
    model, optimizer = trained(0)
    old, _, digests = shards.save_shards(checkpoint, model, optimizer)
    save_tensors(checkpoint, {}, {"shards": {"folder": old.name, "files": digests}})

    def full(self, path, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem.FileSystem, "create_stream", full)
    with pytest.raises(DiskFullError, match="the previous checkpoint, intact"):
        shards.save_shards(checkpoint, model, optimizer)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [old.name]


def test_shards_of_another_model_are_refused_in_one_line(tmp_path):
    model, optimizer = trained(0)
    folder, rest, digests = shards.save_shards(tmp_path / "s.safetensors", model, optimizer)
    other = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(CheckpointError, match="its shards do not fit this model"):
        shards.load_shards(folder, digests, other, torch.optim.AdamW(other.parameters()), rest)


def test_a_linked_shard_folder_or_file_is_never_followed(tmp_path):
    checkpoint = tmp_path / "state.safetensors"
    elsewhere = tmp_path / "users"
    elsewhere.mkdir()
    (elsewhere / "shard-00001-model-00001-of-00001.safetensors").write_text("mine")
    linked = checkpoint.with_name("state.shards-0a0b0c0d")
    linked.symlink_to(elsewhere, target_is_directory=True)
    shards.remove_shards(checkpoint, named=linked)  # as if a checkpoint named the link
    assert (elsewhere / "shard-00001-model-00001-of-00001.safetensors").read_text() == "mine"
    model, optimizer = trained(0)
    folder, _, _ = shards.save_shards(checkpoint, model, optimizer)
    (folder / "shard-00009-model-00001-of-00001.safetensors").symlink_to(
        elsewhere / "shard-00001-model-00001-of-00001.safetensors"
    )
    shards.remove_shards(checkpoint, named=folder)
    assert (elsewhere / "shard-00001-model-00001-of-00001.safetensors").is_file()
    assert [p.name for p in folder.iterdir()] == ["shard-00009-model-00001-of-00001.safetensors"]


def test_tied_weights_are_written_once_and_load_into_both_names(tmp_path):
    """A language model's head shares its embedding: safetensors refuses one tensor twice, so
    the shards hold it once, and loading restores the tie."""
    from kdistill import create_model

    def gpt(seed):
        torch.manual_seed(seed)
        model = create_model("gpt", num_classes=11, input_shape=(8,), n_layer=1, n_embd=8)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.randint(0, 11, (2, 8))).square().mean().backward()
        optimizer.step()
        return model, optimizer

    model, optimizer = gpt(0)
    assert model.head.weight is model.tok_emb.weight
    folder, rest, digests = shards.save_shards(
        tmp_path / "phase.state.safetensors", model, optimizer
    )
    other, other_optimizer = gpt(1)
    shards.load_shards(folder, digests, other, other_optimizer, rest)
    assert other.head.weight is other.tok_emb.weight
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
