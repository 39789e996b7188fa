"""Problems, file formats, benchmark registry, generated tasks and answer checking."""

from latentreason.data.problems import Problem

__all__ = ["Problem"]
