complete --keep-order --exclusive --command strata --arguments "(COMPLETE=fish strata -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
