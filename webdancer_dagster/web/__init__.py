"""The offline web: sites, the server that hosts them, the crawler, search and page fetching."""
