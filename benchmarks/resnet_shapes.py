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
