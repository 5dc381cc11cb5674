"""Matrix-shaped rules: Muon (and later Shampoo, SOAP)."""
