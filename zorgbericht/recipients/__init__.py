"""The recipient flow: link code, terms, birth date, SMS code, viewer and downloads."""
