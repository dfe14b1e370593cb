import CocomemCLI

Cocomem.mainWithSuggestions()
