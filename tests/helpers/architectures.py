"""The architectures under test, from the registry: their tiny configurations as flags or as networks."""

from model import registry

# Every architecture but LCoAN (the default, which most tests exercise on their own): the baselines, and
# any architecture added later.
BASELINES = tuple(name for name in registry.names() if name != registry.DEFAULT)


def tiny_flags(name: str) -> list[str]:
    """``--model NAME`` and the flags of its tiny configuration (``Architecture.tiny``)."""
    flags = ['--model', name]
    for key, value in registry.get(name).tiny.items():
        flags += [f'--{key}', str(value)]
    return flags


def tiny_network(name: str, scale: int = 2, **options):
    """The network ``name`` in its tiny configuration at ``scale`` (``options`` override flags)."""
    arch = registry.get(name)
    return arch.build(scale=scale, **{**arch.tiny, **options})
