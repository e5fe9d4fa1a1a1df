"""Components selected by name from the config (processes, samplers): one registry type for all."""


class Registry(dict):
  """name -> class, filled by the `register` class decorator of each component's file."""

  def __init__(self, what: str):
    super().__init__()
    self.what = what

  def register(self, cls: type) -> type:
    """Class decorator: makes cls selectable by cls.name."""
    if cls.name in self:
      raise ValueError(f'{self.what} {cls.name!r} is registered twice.')
    self[cls.name] = cls
    return cls

  def lookup(self, name: str) -> type:
    """The class registered as `name`; ValueError listing the valid names otherwise."""
    if name not in self:
      raise ValueError(f'Unknown {self.what} {name!r}; valid: {", ".join(self)}.')
    return self[name]
