"""LEEP statistics, pixel transferability and the LEEP score against a brute-force per-voxel reference."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transrisk_components.method.transferability import (
    LEEPStatistics,
    LocationLEEPStatistics,
    class_information,
    leep,
    pixel_transferability,
    prior_floor_leep,
)

NUM_TARGET, NUM_SOURCE = 3, 4


def random_case(seed: int, batch: int = 2, shape: tuple[int, ...] = (5, 4, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 source softmax ``[B, Cs, *shape]`` and target labels ``[B, 1, *shape]``."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, NUM_SOURCE, *shape, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, NUM_TARGET, (batch, 1, *shape), generator=gen)
    return torch.softmax(logits, dim=1), labels


def brute_force(probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None):
    """Per-voxel Python loops: joint, conditional, T per voxel (NaN outside the mask) and LEEP."""
    flat_p = probs.movedim(1, -1).reshape(-1, NUM_SOURCE).tolist()
    flat_y = labels.reshape(-1).tolist()
    flat_m = [True] * len(flat_y) if mask is None else mask.reshape(-1).tolist()
    joint = [[0.0] * NUM_SOURCE for _ in range(NUM_TARGET)]
    n = 0
    for p, y, m in zip(flat_p, flat_y, flat_m):
        if m:
            n += 1
            for z in range(NUM_SOURCE):
                joint[y][z] += p[z]
    joint = [[v / n for v in row] for row in joint]
    cond = [[joint[y][z] / sum(joint[t][z] for t in range(NUM_TARGET)) for z in range(NUM_SOURCE)] for y in range(NUM_TARGET)]
    t_map, logs = [], []
    for p, y, m in zip(flat_p, flat_y, flat_m):
        t = sum(cond[y][z] * p[z] for z in range(NUM_SOURCE))
        t_map.append(t if m else math.nan)
        if m:
            logs.append(math.log(t))
    t_tensor = torch.tensor(t_map, dtype=torch.float64).reshape(labels.shape)
    return torch.tensor(joint, dtype=torch.float64), torch.tensor(cond, dtype=torch.float64), t_tensor, sum(logs) / len(logs)


def test_joint_conditional_transferability_and_leep_match_brute_force():
    probs, labels = random_case(0)
    ref_joint, ref_cond, ref_t, ref_leep = brute_force(probs, labels)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    torch.testing.assert_close(stats.joint, ref_joint, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stats.conditional(), ref_cond, rtol=1e-12, atol=1e-14)
    t_map = pixel_transferability(probs, labels, stats.conditional())
    assert t_map.shape == labels.shape
    torch.testing.assert_close(t_map, ref_t, rtol=1e-12, atol=1e-14)
    assert leep(probs, labels) == pytest.approx(ref_leep, rel=1e-12)
    assert stats.num_voxels == labels.numel()


def test_masked_statistics_match_brute_force():
    probs, labels = random_case(1)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(5)) > 0.4
    ref_joint, _, ref_t, ref_leep = brute_force(probs, labels, mask)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels, mask)
    torch.testing.assert_close(stats.joint, ref_joint, rtol=1e-12, atol=1e-14)
    t_map = pixel_transferability(probs, labels, stats.conditional())
    torch.testing.assert_close(t_map[mask], ref_t[mask], rtol=1e-12, atol=1e-14)
    assert leep(probs, labels, mask) == pytest.approx(ref_leep, rel=1e-12)


def test_conditional_columns_sum_to_one_and_unused_source_class_is_zero():
    probs, labels = random_case(2)
    probs = torch.cat([probs[:, :3], torch.zeros_like(probs[:, :1])], dim=1)
    probs = probs / probs.sum(dim=1, keepdim=True)  # source class 3 never predicted
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    columns = stats.conditional().sum(dim=0)
    torch.testing.assert_close(columns[:3], torch.ones(3, dtype=torch.float64))
    assert columns[3] == 0
    assert stats.joint.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("splits", [[1, 1], [2], [1, 1, 1]])
def test_streaming_updates_equal_one_update(splits):
    probs, labels = random_case(3, batch=sum(splits) if sum(splits) > 1 else 2)
    whole = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    whole.update(probs, labels)
    streamed = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    for chunk_p, chunk_y in zip(probs.split(splits), labels.split(splits)):
        streamed.update(chunk_p, chunk_y)
    torch.testing.assert_close(streamed.joint, whole.joint, rtol=1e-13, atol=1e-15)
    assert streamed.num_voxels == whole.num_voxels


def test_streaming_split_along_space_equals_one_update():
    probs, labels = random_case(4, batch=1, shape=(6, 4, 2))
    whole = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    whole.update(probs, labels)
    halves = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    halves.update(probs[..., :3, :, :], labels[..., :3, :, :])
    halves.update(probs[..., 3:, :, :], labels[..., 3:, :, :])
    torch.testing.assert_close(halves.joint, whole.joint, rtol=1e-13, atol=1e-15)


def test_float32_input_accumulates_in_float64():
    probs, labels = random_case(5)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs.float(), labels)
    assert stats.joint.dtype == torch.float64
    reference = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    reference.update(probs.float().double(), labels)
    torch.testing.assert_close(stats.joint, reference.joint, rtol=0, atol=0)


def test_invariant_to_source_class_order():
    probs, labels = random_case(6)
    order = torch.tensor([2, 0, 3, 1])
    stats, permuted = LEEPStatistics(NUM_TARGET, NUM_SOURCE), LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    permuted.update(probs[:, order], labels)
    torch.testing.assert_close(permuted.joint, stats.joint[:, order])
    t_map = pixel_transferability(probs, labels, stats.conditional())
    t_permuted = pixel_transferability(probs[:, order], labels, permuted.conditional())
    torch.testing.assert_close(t_permuted, t_map)
    assert leep(probs[:, order], labels) == pytest.approx(leep(probs, labels), rel=1e-12)


def test_perfectly_informative_source_gives_transferability_one():
    labels = torch.randint(0, NUM_TARGET, (1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    probs = torch.nn.functional.one_hot(labels[:, 0], NUM_SOURCE).movedim(-1, 1).double()
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    assert torch.all(pixel_transferability(probs, labels, stats.conditional()) == 1)
    assert leep(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_class_transferability_closed_form_equals_the_mean_of_t_per_class():
    probs, labels = random_case(7)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    per_voxel = pixel_transferability(probs, labels, stats.conditional())
    expected = torch.stack([per_voxel[labels == y].mean() for y in range(NUM_TARGET)])
    torch.testing.assert_close(stats.class_transferability(), expected, rtol=1e-12, atol=1e-12)
    prior = stats.class_prior()
    torch.testing.assert_close(prior, torch.stack([(labels == y).double().mean() for y in range(NUM_TARGET)]))
    assert torch.all(stats.class_transferability() >= prior - 1e-12), "T_y is never below the prior floor"


def test_constant_source_sits_on_the_prior_floor():
    _, labels = random_case(8)
    constant = torch.zeros(labels.shape[0], NUM_SOURCE, *labels.shape[2:], dtype=torch.float64)
    constant[:, 1] = 1.0  # always predicts source class 1
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(constant, labels)
    prior = stats.class_prior()
    torch.testing.assert_close(stats.class_transferability(), prior, rtol=1e-12, atol=1e-12)
    assert torch.all(class_information(stats.class_transferability(), prior) == 0)
    assert leep(constant, labels) == pytest.approx(prior_floor_leep(prior), rel=1e-12)


def test_class_information_is_one_for_a_perfect_source_and_nan_free_for_absent_classes():
    labels = torch.tensor([0, 0, 1, 1, 1, 0]).reshape(1, 1, 6, 1, 1)
    perfect = torch.nn.functional.one_hot(labels[:, 0], NUM_SOURCE).movedim(-1, 1).double()  # [1, Cs, 6, 1, 1]
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)  # class 2 never occurs
    stats.update(perfect, labels)
    per_class = stats.class_transferability()
    assert per_class[:2].tolist() == [1.0, 1.0] and math.isnan(per_class[2].item())
    assert class_information(per_class[:2], stats.class_prior()[:2]).tolist() == [1.0, 1.0]
    assert prior_floor_leep(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(math.log(0.5))


def test_state_dict_round_trip_and_mismatch():
    probs, labels = random_case(8)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    restored = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    restored.load_state_dict(stats.state_dict())
    torch.testing.assert_close(restored.joint, stats.joint)
    assert restored.num_voxels == stats.num_voxels
    with pytest.raises(ValueError, match="target x"):
        LEEPStatistics(NUM_TARGET + 1, NUM_SOURCE).load_state_dict(stats.state_dict())


def test_all_reduce_is_noop_without_distributed():
    probs, labels = random_case(9)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    stats.update(probs, labels)
    before = stats.joint.clone()
    stats.all_reduce()
    torch.testing.assert_close(stats.joint, before)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _all_reduce_worker(rank: int, world_size: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        probs, labels = random_case(10, batch=world_size)
        stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
        stats.update(probs[rank : rank + 1], labels[rank : rank + 1])
        stats.all_reduce()
        out[rank] = (stats.joint, stats.num_voxels)
    finally:
        dist.destroy_process_group()


def test_all_reduce_with_two_gloo_processes_equals_single_process():
    probs, labels = random_case(10, batch=2)
    single = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    single.update(probs, labels)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_all_reduce_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
        results = dict(out)
    for rank in (0, 1):
        joint, num_voxels = results[rank]
        torch.testing.assert_close(joint, single.joint, rtol=1e-13, atol=1e-15)
        assert num_voxels == single.num_voxels


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, y: (p, y + NUM_TARGET - y.max()), "outside"),
        (lambda p, y: (p, y - 1), "outside"),
        (lambda p, y: (p[:, :3] / p[:, :3].sum(1, keepdim=True), y), "source classes"),
        (lambda p, y: (p, y[..., :-1]), "spatial shape"),
        (lambda p, y: (p.masked_fill(torch.zeros_like(p, dtype=torch.bool).index_fill_(2, torch.tensor([0]), True), float("nan")), y), "NaN"),
        (lambda p, y: (p * 2, y), "sum to 1"),
        (lambda p, y: (torch.log(p), y), "negative"),
        (lambda p, y: (p, y.double() + 0.5), "integer"),
    ],
    ids=["label-too-high", "label-negative", "class-count", "shape", "nan", "not-normalised", "logits", "fractional"],
)
def test_bad_inputs_raise_value_error(mutate, message):
    probs, labels = random_case(11)
    bad_probs, bad_labels = mutate(probs, labels)
    stats = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    with pytest.raises(ValueError, match=message):
        stats.update(bad_probs, bad_labels)
    stats.update(probs, labels)
    with pytest.raises(ValueError, match=message):
        pixel_transferability(bad_probs, bad_labels, stats.conditional())


def test_empty_mask_raises():
    probs, labels = random_case(12)
    empty = torch.zeros_like(labels, dtype=torch.bool)
    with pytest.raises(ValueError, match="no voxels"):
        LEEPStatistics(NUM_TARGET, NUM_SOURCE).update(probs, labels, empty)
    with pytest.raises(ValueError, match="no voxels"):
        leep(probs, labels, empty)


def test_joint_before_update_raises():
    with pytest.raises(ValueError, match="no voxels"):
        LEEPStatistics(NUM_TARGET, NUM_SOURCE).conditional()


def location_brute_force(probs: torch.Tensor, labels: torch.Tensor, patch: int, mask: torch.Tensor | None = None):
    """Per location (cube of ``patch`` voxels, over every case of the batch): conditional, ``T`` per voxel (NaN
    outside the mask) and ``LEEP_l`` (NaN without voxels), by :func:`brute_force` on the location's voxels."""
    spatial = labels.shape[2:]
    grids = torch.meshgrid(*[torch.arange(n) // patch for n in spatial], indexing="ij")
    cells = [math.ceil(n / patch) for n in spatial]
    location = (grids[0] * cells[1] + grids[1]) * cells[2] + grids[2]  # [*S], row-major
    t_map = torch.full(labels.shape, math.nan, dtype=torch.float64)
    conditionals, leeps = {}, {}
    for loc in range(math.prod(cells)):
        select = (location == loc).expand(labels.shape[0], *spatial).unsqueeze(1)  # [B, 1, *S]
        if mask is not None:
            select = select & mask
        if not select.any():
            leeps[loc] = math.nan
            continue
        part_p = probs.movedim(1, -1)[select[:, 0]].T.reshape(1, NUM_SOURCE, -1)  # [1, Cs, n]
        part_y = labels[select].reshape(1, 1, -1)
        _, conditionals[loc], part_t, leeps[loc] = brute_force(part_p, part_y)
        t_map[select] = part_t.reshape(-1)
    return location, conditionals, t_map, leeps


@pytest.mark.parametrize("patch", [2, 3])
def test_location_statistics_match_brute_force_per_location(patch):
    probs, labels = random_case(20, batch=3, shape=(6, 5, 4))
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) > 0.2
    location, ref_cond, ref_t, ref_leep = location_brute_force(probs, labels, patch, mask)
    stats = LocationLEEPStatistics(NUM_TARGET, NUM_SOURCE, spatial_shape=(6, 5, 4), patch=patch)
    assert torch.equal(stats.location_index(), location)
    for case in range(3):  # one case at a time, as the risk stage feeds them
        stats.update(probs[case : case + 1], labels[case : case + 1], mask[case : case + 1])
    assert stats.num_voxels == int(mask.sum())
    conditional = stats.conditional()
    for loc, cond in ref_cond.items():
        present = cond.sum(dim=0) > 0  # source columns that received mass
        torch.testing.assert_close(conditional[loc][:, present], cond[:, present], rtol=1e-10, atol=1e-12)
    t_map = stats.transferability(probs, labels)
    torch.testing.assert_close(t_map[mask], ref_t[mask], rtol=1e-10, atol=1e-12)
    for case in range(3):
        stats.update_leep(t_map[case : case + 1], mask[case : case + 1])
    leeps = stats.location_leep()
    expected = torch.tensor([ref_leep[loc] for loc in range(stats.num_locations)], dtype=torch.float64)
    torch.testing.assert_close(leeps, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(stats.leep_map(), expected[location], equal_nan=True)


def test_one_location_spanning_the_grid_is_the_pooled_statistics():
    probs, labels = random_case(21, batch=2, shape=(5, 4, 3))
    stats = LocationLEEPStatistics(NUM_TARGET, NUM_SOURCE, spatial_shape=(5, 4, 3), patch=8)
    stats.update(probs, labels)
    pooled = LEEPStatistics(NUM_TARGET, NUM_SOURCE)
    pooled.update(probs, labels)
    assert stats.num_locations == 1
    torch.testing.assert_close(stats.conditional()[0], pooled.conditional())
    t_map = stats.transferability(probs, labels)
    torch.testing.assert_close(t_map, pixel_transferability(probs, labels, pooled.conditional()))
    stats.update_leep(t_map)
    assert stats.location_leep().item() == pytest.approx(leep(probs, labels), rel=1e-12)


def test_location_map_sees_a_mapping_that_flips_across_the_grid():
    """Source class 0 means target class 1 on the left half and target class 0 on the right: pooled over the grid
    the source tells nothing (T = 1/2), per location it tells everything (T = 1, LEEP_l = 0)."""
    shape = (8, 4, 4)
    source_class = torch.randint(0, 2, (2, 1, *shape), generator=torch.Generator().manual_seed(3))
    probs = torch.cat([source_class == 0, source_class == 1], dim=1).double()  # one-hot [2, 2, *S]
    left = (torch.arange(8) < 4).view(1, 1, 8, 1, 1)
    labels = torch.where(left, 1 - source_class, source_class)
    pooled = LEEPStatistics(2, 2)
    pooled.update(probs, labels)
    assert pixel_transferability(probs, labels, pooled.conditional()).max() < 0.6
    stats = LocationLEEPStatistics(2, 2, spatial_shape=shape, patch=4)
    stats.update(probs, labels)
    t_map = stats.transferability(probs, labels)
    torch.testing.assert_close(t_map, torch.ones_like(t_map, dtype=torch.float64))
    stats.update_leep(t_map)
    torch.testing.assert_close(stats.location_leep(), torch.zeros(stats.num_locations, dtype=torch.float64))


def test_location_transferability_of_listed_voxels_equals_the_grid_values_there():
    """The risk stage keeps the masked voxels only: ``T`` of a list of voxels with their locations is ``T`` of the
    grid at those voxels, bit for bit."""
    probs, labels = random_case(23, batch=1, shape=(6, 5, 4))
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2)) > 0.3  # [1, 1, *S]
    stats = LocationLEEPStatistics(NUM_TARGET, NUM_SOURCE, spatial_shape=(6, 5, 4), patch=2)
    stats.update(probs, labels, mask)
    inside = mask[0, 0]
    listed = stats.transferability(probs[:, :, inside], labels[:, :, inside], stats.location_index()[inside])
    assert listed.shape == (1, 1, int(inside.sum()))
    assert torch.equal(listed.flatten(), stats.transferability(probs, labels)[mask])
    with pytest.raises(ValueError, match="one location per voxel"):
        stats.transferability(probs[:, :, inside], labels[:, :, inside], stats.location_index()[inside][1:])


def test_location_statistics_refuse_another_grid():
    stats = LocationLEEPStatistics(NUM_TARGET, NUM_SOURCE, spatial_shape=(5, 4, 3), patch=2)
    probs, labels = random_case(22, batch=1, shape=(5, 4, 4))
    with pytest.raises(ValueError, match="not co-registered"):
        stats.update(probs, labels)
    with pytest.raises(ValueError, match="patch >= 1"):
        LocationLEEPStatistics(NUM_TARGET, NUM_SOURCE, spatial_shape=(5, 4, 3), patch=0)
