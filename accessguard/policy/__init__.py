"""Policy files: the rules, the schema catalog and the watch-list, parsed with line numbers."""


def __getattr__(name: str) -> object:  # the 0.1 module's names, deprecated (accessguard.moved)
    from accessguard.moved import moved_name

    return moved_name(__name__, name)
