"""Tiny name -> factory registries for models, losses, metrics and tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from neurotrain.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a name to a factory, filled by a decorator.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... def build_mlp(width: int): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        factory = self.get(name)
        return factory(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


MODELS: Registry[Callable[..., Any]] = Registry("model")
LOSSES: Registry[Callable[..., Any]] = Registry("loss")
METRICS: Registry[Callable[..., Any]] = Registry("metric")
TASKS: Registry[Any] = Registry("task")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
