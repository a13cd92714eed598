"""One exception type for bad user input, so `cai.main` can print it as a single line."""


class ConfigError(ValueError):
    """A config value, file or flag that cannot work; the message names what is wrong."""


class Halted(Exception):
    """A stage stopped early on purpose (``halt_at_step``, ``halt_after_shards``), as if the job
    were preempted: ``cai.main`` exits cleanly without running later stages; a rerun resumes."""
