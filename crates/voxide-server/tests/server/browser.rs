//! The web page at `/` in a real headless browser.
