"""Policy files: the rules, the schema catalog and the watch-list, parsed with line numbers."""
