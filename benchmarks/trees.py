"""Parameter-tree shapes for the benchmarks (and the state-size tests)."""

from __future__ import annotations


def resnet50() -> dict[str, tuple[int, ...]]:
    """ResNet-50 (ImageNet, 1000 classes): 161 leaves, 25,557,032 parameters
    (conv kernels HWIO, batch-norm scale and bias, the final dense layer)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(name, k, cin, cout):
        shapes[f"{name}/kernel"] = (k, k, cin, cout)
        shapes[f"{name}/bn_scale"] = (cout,)
        shapes[f"{name}/bn_bias"] = (cout,)

    conv_bn("stem", 7, 3, 64)
    cin = 64
    for stage, (mid, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        out = 4 * mid
        for block in range(blocks):
            prefix = f"stage{stage}/block{block}"
            conv_bn(f"{prefix}/conv1", 1, cin, mid)
            conv_bn(f"{prefix}/conv2", 3, mid, mid)
            conv_bn(f"{prefix}/conv3", 1, mid, out)
            if block == 0:
                conv_bn(f"{prefix}/downsample", 1, cin, out)
            cin = out
    shapes["fc/kernel"] = (2048, 1000)
    shapes["fc/bias"] = (1000,)
    return shapes


def gpt2_small() -> dict[str, tuple[int, ...]]:
    """GPT-2 small: 148 leaves, 124,439,808 parameters (tied output embedding)."""
    d, vocab, ctx = 768, 50257, 1024
    shapes: dict[str, tuple[int, ...]] = {"wte": (vocab, d), "wpe": (ctx, d)}
    for layer in range(12):
        p = f"h{layer}"
        shapes.update(
            {
                f"{p}/ln1/g": (d,),
                f"{p}/ln1/b": (d,),
                f"{p}/attn/c_attn/w": (d, 3 * d),
                f"{p}/attn/c_attn/b": (3 * d,),
                f"{p}/attn/c_proj/w": (d, d),
                f"{p}/attn/c_proj/b": (d,),
                f"{p}/ln2/g": (d,),
                f"{p}/ln2/b": (d,),
                f"{p}/mlp/c_fc/w": (d, 4 * d),
                f"{p}/mlp/c_fc/b": (4 * d,),
                f"{p}/mlp/c_proj/w": (4 * d, d),
                f"{p}/mlp/c_proj/b": (d,),
            }
        )
    shapes["ln_f/g"] = (d,)
    shapes["ln_f/b"] = (d,)
    return shapes


def small_leaves(n: int = 2000) -> dict[str, tuple[int, ...]]:
    """Many small leaves, as in models with many layers of small norms and biases."""
    kinds = [(16,), (8, 8), (32,), (4, 4, 4), (64,)]
    return {f"leaf{i:04d}": kinds[i % len(kinds)] for i in range(n)}


def count(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total
