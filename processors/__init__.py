"""Stream processors: pure window and detector logic plus the faust apps that wire it."""
