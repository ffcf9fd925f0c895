# %systemd_post, without the preset: installing enables and starts nothing, also where the
# distribution's presets would enable every unit (the admin runs `systemctl enable --now
# docker-tls-manager`). The reload is for systemd versions without unit file triggers.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
