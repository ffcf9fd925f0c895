# %systemd_post, without the preset: installing enables and starts nothing, also where the
# distribution's presets would enable every unit (the admin runs `systemctl enable --now
# docker-tls-manager`). The reload is for systemd versions without unit file triggers.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
# Upgrade ($1 >= 2): the authorization plugin (a unit docker-tls-manager writes) would go on
# running the old binary: restarted if running; its socket, held by systemd, keeps Docker's
# requests meanwhile.
if [ "$1" -ge 2 ]; then
    systemctl try-restart docker-tls-manager-authz.service >/dev/null 2>&1 || :
fi
