# %systemd_preun equivalent: on erase ($1 = 0), stop and disable the service.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now docker-tls-manager.service docker-tls-manager-prepare.service >/dev/null 2>&1 || :
fi
