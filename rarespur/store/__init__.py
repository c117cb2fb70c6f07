"""The run store: one directory per resolved config, written atomically, trusted only as far as its done marker vouches."""
