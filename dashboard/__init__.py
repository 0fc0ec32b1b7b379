"""Streamlit helpers shared by the dashboard's pages (pai_core itself never imports streamlit).

The page scripts live in ``app_pages/``; ``app.py`` routes to them with ``st.navigation``.
"""
