"""With two CPU processes (gloo), the contrastive loss uses the keys of both and the center is the global one."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from predec.pretrain import contrastive_loss, update_center

WORLD = 2
SPLIT = (slice(0, 3), slice(3, 4))  # unequal local batches: 3 images on rank 0, 1 on rank 1


def _global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch, num, dim = 4, 6, 5
    query_valid = torch.rand(batch, num, generator=generator) < 0.7
    key_valid = torch.rand(batch, num, generator=generator) < 0.7
    query_valid[3, :3] = key_valid[3, :3] = True  # rank 1 has at least 3 queries
    return {
        "queries": torch.randn(batch, num, dim, generator=generator),
        "keys": torch.randn(batch, num, dim, generator=generator),
        "query_valid": query_valid,
        "key_valid": key_valid,
        "teacher1": torch.randn(batch, num, 3, 3, generator=generator),
        "teacher2": torch.randn(batch, num, 3, 3, generator=generator),
        "center": torch.randn(1, num, generator=generator),
    }


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        data = {name: value[SPLIT[rank]] if name != "center" else value for name, value in _global_batch().items()}
        queries = data["queries"].clone().requires_grad_()
        loss, stats = contrastive_loss(queries, data["keys"], data["query_valid"], data["key_valid"])
        loss.backward()
        center = update_center(data["center"], [data["teacher1"], data["teacher2"]], 0.9)
        torch.save(
            {"loss": loss.detach(), "stats": stats, "grad": queries.grad, "center": center}, f"{out_dir}/{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_use_global_negatives_and_center(tmp_path):
    # spawn, not fork: once the test process has run autograd (earlier tests did), a forked child's backward fails
    args = (str(tmp_path / "store"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD)]
    data = _global_batch()
    queries = data["queries"].clone().requires_grad_()
    loss, stats = contrastive_loss(queries, data["keys"], data["query_valid"], data["key_valid"])
    loss.backward()
    assert not dist.is_initialized()
    # every process sees all the global keys
    assert [r["stats"]["keys"] for r in results] == [stats["keys"]] * WORLD == [int(data["key_valid"].sum())] * WORLD
    counts = [r["stats"]["queries"] for r in results]
    assert sum(counts) == stats["queries"] and min(counts) >= 2
    # the global loss is the query-weighted mean of the local ones (labels offset by the lower ranks' keys)
    weighted = sum(r["loss"] * n for r, n in zip(results, counts)) / sum(counts)
    torch.testing.assert_close(weighted, loss.detach())
    # gradients reach only the local queries, and agree with the global loss up to the weighting
    for rank, result in enumerate(results):
        scale = sum(counts) / counts[rank]
        torch.testing.assert_close(result["grad"], queries.grad[SPLIT[rank]] * scale)
    center = update_center(data["center"], [data["teacher1"], data["teacher2"]], 0.9)
    for result in results:
        torch.testing.assert_close(result["center"], center)
