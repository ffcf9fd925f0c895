# %systemd_post equivalent, without presets: install enables and starts nothing.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
