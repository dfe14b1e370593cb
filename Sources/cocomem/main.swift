import CocomemCLI

Cocomem.main()
