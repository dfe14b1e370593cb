import CocomemCLI
