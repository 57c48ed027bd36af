"""The conversations a villager has with the box: USSD dialogs, screens, locales.

Nothing here does I/O. The daemon feeds hops in and gets screens and store work out.
"""
