"""The fleet: the servers a scenario runs (`servers:`, or `server:` as a fleet of one).

Each server group (`servers[g]`) is one site: its servers share a device, how they run and
the links the client groups have to them (`clients[].link`, with the fields of
`clients[].sites[<group name>]` replaced). `site_view(ld, g)` is the scenario as seen from
group g's site: a `LoadedScenario` whose one server is that group's device (with the
group's own batching settings, where it gives them) and whose client links are the links
to that site, so everything built for one server (placement problems,
planners, link models) is built per site unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sim.catalog.specs import DeviceSpec
from sim.config.scenario import GROUP_BATCHING, ServerConfig, ServerGroup
from sim.errors import UserError


@dataclass(frozen=True)
class ServerSite:
    """One server of the fleet: its name, its group (index into `servers`), its device."""

    name: str
    group: int
    device: DeviceSpec


def fleet_servers(groups: list[ServerGroup], devices: list[DeviceSpec]) -> list[ServerSite]:
    """Every server of the groups, in order: a group of one is named as the group, the
    servers of a larger group `<name>-0`, `<name>-1`, ..."""
    out = []
    for g, (group, device) in enumerate(zip(groups, devices, strict=True)):
        for j in range(group.count):
            name = group.name if group.count == 1 else f"{group.name}-{j}"
            out.append(ServerSite(name, g, device))
    return out


def server_config(group: ServerGroup) -> ServerConfig:
    """How one server of the group runs (the fields a single `server:` has)."""
    return ServerConfig(**{k: getattr(group, k) for k in ServerConfig.model_fields})


def check_fleet(ld) -> None:
    """Names a fleet refers to must exist: the models a group holds, the sites a client
    group's links name; every request class's model must be held by some group."""
    sc = ld.scenario
    groups = sc.servers or []
    names = {g.name for g in groups}
    for i, client in enumerate(sc.clients):
        for site in client.sites:
            if site not in names:
                known = ", ".join(sorted(names)) or "none: sites need servers"
                raise UserError(
                    f"{ld.source}: clients.{i}.sites.{site}: no server group named '{site}' "
                    f"(server groups: {known})"
                )
    for g, group in enumerate(groups):
        for m, model in enumerate(group.models or []):
            if model not in ld.models:
                raise UserError(f"{ld.source}: servers.{g}.models.{m}: unknown model '{model}'")
    for k, cls in enumerate(sc.workload.mix):
        if cls.task == "synthetic" or not groups:
            continue
        if not any(g.models is None or cls.model in g.models for g in groups):
            raise UserError(
                f"{ld.source}: workload.mix.{k}.model: no server group holds '{cls.model}' "
                "(add it to a group's models, or leave models out to hold every model)"
            )


def site_view(ld, g: int):
    """The scenario seen from server group g's site (see the module doc); for `server:`
    (no fleet) the scenario itself."""
    sc = ld.scenario
    if sc.servers is None:
        return ld
    group = sc.servers[g]
    clients = [
        c.model_copy(update={"link": c.link.model_copy(update=_site_fields(c, group.name))})
        for c in sc.clients
    ]
    batching = {k: getattr(group, k) for k in GROUP_BATCHING if getattr(group, k) is not None}
    simulation = sc.simulation.model_copy(update=batching) if batching else sc.simulation
    view = sc.model_copy(
        update={"server": server_config(group), "clients": clients, "simulation": simulation}
    )
    return replace(ld, scenario=view, server_device=ld.group_devices[g])


def _site_fields(client, site: str) -> dict:
    """The link fields a client group sets for one site (none: its own link)."""
    found = client.sites.get(site)
    return {} if found is None else found.model_dump(exclude_none=True)


def holds(group: ServerGroup, model: str | None) -> bool:
    """Whether the group's servers hold `model` (a synthetic request: any server)."""
    return model is None or group.models is None or model in group.models
