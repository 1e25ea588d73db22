"""Parameter shapes of standard networks, in PyTorch layout (output axis first).

Use `flax_layout(shape)` for the Flax/Keras layout of the same parameter.
"""


def resnet50():
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [
                (planes, inplanes, 1, 1),
                (planes,),
                (planes,),
                (planes, planes, 3, 3),
                (planes,),
                (planes,),
                (planes * 4, planes, 1, 1),
                (planes * 4,),
                (planes * 4,),
            ]
            if b == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    shapes += [(1000, 2048), (1000,)]
    return shapes


def resnet18():
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes in (64, 128, 256, 512):
        for b in range(2):
            shapes += [
                (planes, inplanes, 3, 3),
                (planes,),
                (planes,),
                (planes, planes, 3, 3),
                (planes,),
                (planes,),
            ]
            if b == 0 and planes != 64:
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            inplanes = planes
    shapes += [(1000, 512), (1000,)]
    return shapes


def gpt2(layers=12, width=768, vocab=50257, positions=1024):
    """GPT-2's parameters as ``(shape, gc_axis)``: transformers' ``Conv1D`` weights are
    ``(in, out)`` (axis 1); embeddings, norms and biases get no GC (``None``), as
    ``gcore_torch.param_groups`` gives them (the tied ``lm_head`` is ``wte``)."""
    params = [((vocab, width), None), ((positions, width), None)]
    for _ in range(layers):
        params += [((width,), None), ((width,), None)]  # ln_1
        params += [((width, 3 * width), 1), ((3 * width,), None)]  # attn.c_attn
        params += [((width, width), 1), ((width,), None)]  # attn.c_proj
        params += [((width,), None), ((width,), None)]  # ln_2
        params += [((width, 4 * width), 1), ((4 * width,), None)]  # mlp.c_fc
        params += [((4 * width, width), 1), ((width,), None)]  # mlp.c_proj
    return [*params, ((width,), None), ((width,), None)]  # ln_f


def count(shapes):
    n = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        n += k
    return n


if __name__ == "__main__":
    print("resnet18", len(resnet18()), count(resnet18()))
    print("resnet50", len(resnet50()), count(resnet50()))


def flax_layout(shape):
    """The Flax/Keras layout of a torch-layout shape: conv (out, in, kh, kw) -> (kh, kw, in,
    out); dense (out, in) -> (in, out); vectors unchanged."""
    if len(shape) == 4:
        o, i, kh, kw = shape
        return (kh, kw, i, o)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)
