"""Small measurements: preprocessing images/s per core, padded-token shares, the cost of moving pixel_values."""

import random
import statistics
import time
from pathlib import Path

from ..plan import grouped

CROP = 336


def naive_process(image, num_crops: int, mean, std):
    """The same HD transform written the straightforward way: PIL canvas padding, then every crop cut, converted
    and normalised on its own."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from ..phi3_v.image_processing_phi3_v import hd_grid

    image = image.convert("RGB")
    transposed = image.width < image.height
    if transposed:  # resize with the long side horizontal, as the reference does (PIL's two passes round in order)
        image = image.transpose(Image.Transpose.TRANSPOSE)
    new_w, new_h, rows, cols = hd_grid(*image.size, num_crops)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (cols * CROP, rows * CROP), (255, 255, 255))
    canvas.paste(resized, (0, (rows * CROP - new_h) // 2))
    if transposed:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        rows, cols = cols, rows
    mean, std = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)

    def to_tensor(img):
        return torch.from_numpy(((np.asarray(img, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy())

    crops = [
        to_tensor(canvas.crop((c * CROP, r * CROP, (c + 1) * CROP, (r + 1) * CROP)))
        for r in range(rows)
        for c in range(cols)
    ]
    glb = F.interpolate(to_tensor(canvas)[None], size=(CROP, CROP), mode="bicubic", align_corners=False)[0]
    slots = [glb, *crops] + [torch.zeros(3, CROP, CROP)] * (num_crops - rows * cols)
    return torch.stack(slots)


def bench_preprocessing(processor, folder: Path, repeats: int = 3) -> list[dict]:
    import numpy as np
    import torch
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(1000, 750), (2000, 1500), (750, 1000)] * 3):
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([x % 256, y % 256, (x * y) % 256], -1) + rng.normal(0, 25, (h, w, 3))
        paths.append(folder / f"photo{i}.jpg")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    images = [Image.open(p).convert("RGB") for p in paths]
    image_processor = processor.image_processor
    saved_crops = image_processor.num_crops
    rows = []
    for num_crops in (4, 16):
        image_processor.num_crops = num_crops

        def ours():
            for image in images:
                image_processor(image)

        def per_crop(crops=num_crops):
            for image in images:
                naive_process(image, crops, image_processor.image_mean, image_processor.image_std)

        implementations = {"ours": ours, "per-crop": per_crop}
        speeds = {name: [] for name in implementations}
        for fn in implementations.values():
            fn()  # warm-up
        for repeat in range(repeats):  # interleaved, the order alternating
            for name in sorted(implementations, reverse=repeat % 2 == 1):
                start = time.process_time()  # CPU time: what other work on the machine takes does not count
                implementations[name]()
                speeds[name].append(len(images) / (time.process_time() - start))
        for name, values in speeds.items():
            rows.append({"num_crops": num_crops, "implementation": name, "images_per_s_per_core": values})
    image_processor.num_crops = saved_crops
    torch.set_num_threads(threads)
    return rows


def padded_share(lengths: list[int], batches: list[list[int]], pad_to: int | None = None) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    total = sum((pad_to or max(lengths[i] for i in b)) * len(b) for b in batches)
    return 1 - real / total


def random_batches(n: int, batch_size: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def bench_padding(lengths: list[int], batch_size: int) -> list[dict]:
    return [
        {
            "padding": "longest in batch (official, trl)",
            "padded_share": padded_share(lengths, random_batches(len(lengths), batch_size)),
        },
        {
            "padding": "longest in batch + length grouping (ours)",
            "padded_share": padded_share(lengths, grouped(lengths, batch_size)),
        },
    ]


class Copies:
    """A dataset whose every item is a fresh copy of one tensor: what a worker makes and hands over."""

    def __init__(self, tensor, n: int):
        self.tensor, self.n = tensor, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.tensor.clone()


def bench_pipes(batch_size: int, num_crops: int, real: int, device: str, repeats: int = 5) -> list[dict]:
    """The cost of handing a batch's pixel_values from a DataLoader worker to the main process (the worker's copy
    into shared memory; the main process's receipt, once the batch is ready) and, on CUDA, to the GPU (pinning and
    the copy), for the tensor as sent (float32, every crop slot) and two smaller forms: ``real`` crops per image
    only, and uint8 (to be normalised on the device)."""
    import torch

    forms = {
        "float32, every slot (sent now)": torch.randn(batch_size, num_crops + 1, 3, CROP, CROP),
        "float32, real crops only": torch.randn(batch_size * real, 3, CROP, CROP),
        "uint8, every slot": torch.randint(0, 255, (batch_size, num_crops + 1, 3, CROP, CROP), dtype=torch.uint8),
    }
    rows = []
    for name, tensor in forms.items():
        copy, receive, to_gpu = [], [], []
        for _ in range(repeats):
            fresh = tensor.clone()
            start = time.perf_counter()
            fresh.share_memory_()
            copy.append(time.perf_counter() - start)
        loader = torch.utils.data.DataLoader(Copies(tensor, repeats + 1), batch_size=None, num_workers=1)
        batches = iter(loader)
        next(batches)
        for _ in range(repeats):
            time.sleep(0.3)  # the worker has the next batch ready, as when it keeps ahead of training
            start = time.perf_counter()
            batch = next(batches)
            receive.append(time.perf_counter() - start)
            if device == "cuda":
                start = time.perf_counter()
                batch.pin_memory().to("cuda", non_blocking=True)
                torch.cuda.synchronize()
                to_gpu.append(time.perf_counter() - start)
        row = {
            "pixel_values": name,
            "mb_per_batch": tensor.numel() * tensor.element_size() / 2**20,
            "worker_copy_ms": statistics.median(copy) * 1e3,
            "main_receive_ms": statistics.median(receive) * 1e3,
        }
        if to_gpu:
            row["pin_and_copy_to_gpu_ms"] = statistics.median(to_gpu) * 1e3
        rows.append(row)
    return rows
