"""Speed and memory benchmarks (`latentreason bench ...`); not part of the test suite."""
