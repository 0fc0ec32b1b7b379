"""Streamlit helpers shared by the dashboard's pages (pai_core itself never imports streamlit).

Kept outside ``pages/`` so Streamlit does not list it as a page.
"""
