//! The tokio shell around the state machine: it turns the ARP socket, the
//! netlink socket, the timer and the shutdown request into events, feeds
//! them to [`Machine`] with the time, and performs the actions it returns
//! (send, arm the timer, swap the filter, run the script).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::error::Error;
use super::interface::Interface;
use super::last_address::LastAddress;
use super::netlink::{self, LinkEvent, RouteSocket};
use super::options::Config;
use super::script::{Script, Step};
use super::state::{Action, Event, Exit, Machine, Settings};
use crate::arp::{filter, mac_text, ArpPacket, ETHERTYPE_ARP};
use crate::packet_socket::PacketSocket;
use crate::rng::{clock_noise, seed_from_mac};
use crate::service::{io_text, Context, HostOptions, Launch, ServiceResult};

/// Room for an ARP packet plus link padding; longer packets are cut, and
/// only their first 28 bytes are read anyway.
const FRAME_BUFFER: usize = 128;
/// Netlink datagrams can carry many messages.
const NETLINK_BUFFER: usize = 32 * 1024;
/// Pause after a receive error on the ARP socket, so that a persistent one
/// cannot spin; netlink reports what caused it.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub fn launch(config: Config, host: HostOptions) -> Launch {
    Launch::new(host, move |ctx| run(config, ctx))
}

/// The edge: zcip's [`Error`] becomes the host's one-line message.
async fn run(config: Config, ctx: Context) -> ServiceResult {
    Ok(serve(config, ctx).await?)
}

async fn serve(config: Config, ctx: Context) -> Result<(), Error> {
    let interface = Interface::lookup(&config.interface)?;
    let script = Script {
        path: config.script.clone(),
        interface: config.interface.clone(),
    };
    // `init` failing stops zcip, before it reports being started.
    script.run(Step::Init, None).await?;
    let route = RouteSocket::open().map_err(Error::RouteSocket)?;
    route
        .request_link(interface.index)
        .map_err(|error| Error::LinkQuery {
            interface: interface.name.clone(),
            error,
        })?;
    let watch_nothing = filter::program(interface.mac, None);
    let arp = PacketSocket::open(interface.index, ETHERTYPE_ARP, Some(&watch_nothing)).map_err(
        |error| Error::ArpSocket {
            interface: interface.name.clone(),
            error,
        },
    )?;
    let last_address = LastAddress::new(&config.state_dir, &config.interface);
    let address_seed = seed_from_mac(interface.mac);
    let machine = Machine::new(Settings {
        mac: interface.mac,
        network: config.network,
        preferred: config
            .request
            .into_iter()
            .chain(last_address.load())
            .collect(),
        quit_when_bound: config.quit,
        address_seed,
        // Varies the random delays between runs on one host.
        delay_seed: address_seed ^ clock_noise(),
    });
    // Don't delay boot: the address comes later.
    ctx.ready();
    info!("start, interface {}", interface.name);
    let shell = Shell {
        interface,
        script,
        last_address,
        arp,
        route,
        machine,
        start: Instant::now(),
        deadline: None,
        link_usable: None,
    };
    shell.run(&ctx).await
}

struct Shell {
    interface: Interface,
    script: Script,
    last_address: LastAddress,
    arp: PacketSocket,
    route: RouteSocket,
    machine: Machine,
    start: Instant,
    /// When to deliver [`Event::Timer`], relative to `start`.
    deadline: Option<Duration>,
    /// The last link state reported to the machine; `None` before the first.
    link_usable: Option<bool>,
}

impl Shell {
    async fn run(mut self, ctx: &Context) -> Result<(), Error> {
        let mut shutdown = ctx.shutdown();
        let mut frame = [0u8; FRAME_BUFFER];
        let mut datagram = vec![0u8; NETLINK_BUFFER];
        loop {
            let mut events = VecDeque::new();
            tokio::select! {
                _ = shutdown.requested() => events.push_back(Event::Shutdown),
                _ = sleep_until(self.start, self.deadline), if self.deadline.is_some() => {
                    events.push_back(Event::Timer);
                }
                received = self.arp.recv_from_wire(&mut frame) => match received {
                    Ok(len) => match ArpPacket::parse(&frame[..len.min(FRAME_BUFFER)]) {
                        Ok(packet) => events.push_back(Event::Frame(packet)),
                        Err(e) => debug!("dropped a malformed ARP packet: {e}"),
                    },
                    Err(e) => {
                        debug!("ARP socket: {}", io_text(&e));
                        tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                    }
                },
                received = self.route.recv(&mut datagram) => match received {
                    Ok(len) => self.link_events(&datagram[..len.min(NETLINK_BUFFER)], &mut events),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        warn!("link events were lost; asking the kernel again");
                        if let Err(e) = self.route.request_link(self.interface.index) {
                            warn!("cannot query {}: {}", self.interface.name, io_text(&e));
                        }
                    }
                    Err(e) => return Err(Error::Netlink(e)),
                },
            }
            // Performing an action can raise an event (a failed probe send).
            while let Some(event) = events.pop_front() {
                let actions = self.machine.handle(event, self.start.elapsed());
                for action in actions {
                    if self.perform(action, ctx, &mut events).await?.is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn link_events(&mut self, datagram: &[u8], events: &mut VecDeque<Event>) {
        if netlink::is_error(datagram) {
            warn!(
                "the kernel refused the link query for {}",
                self.interface.name
            );
        }
        for link_event in netlink::parse(datagram, self.interface.index) {
            match link_event {
                LinkEvent::Link { usable } => {
                    if self.link_usable == Some(usable) {
                        continue;
                    }
                    let first = self.link_usable.is_none();
                    self.link_usable = Some(usable);
                    match (usable, first) {
                        (true, _) => {
                            if !first {
                                info!("{}: carrier back", self.interface.name);
                            }
                            // The ENETDOWN of the link going down is still
                            // pending on the socket; it is not news.
                            if let Some(e) = self.arp.take_error() {
                                debug!("cleared a stale ARP socket error: {}", io_text(&e));
                            }
                            events.push_back(Event::LinkUp);
                        }
                        (false, true) => {
                            info!("{}: no carrier yet, waiting", self.interface.name);
                            events.push_back(Event::LinkDown);
                        }
                        (false, false) => {
                            info!("{}: carrier lost", self.interface.name);
                            events.push_back(Event::LinkDown);
                        }
                    }
                }
                LinkEvent::Removed => {
                    warn!("interface {} disappeared", self.interface.name);
                    events.push_back(Event::InterfaceGone);
                }
                LinkEvent::AddressRemoved(address) => {
                    events.push_back(Event::AddressRemoved(address))
                }
            }
        }
    }

    /// Performs one action, queueing any event it raises; `Break` ends the
    /// service cleanly, an error ends it with that error.
    async fn perform(
        &mut self,
        action: Action,
        ctx: &Context,
        events: &mut VecDeque<Event>,
    ) -> Result<ControlFlow<()>, Error> {
        let mac = self.interface.mac;
        match action {
            Action::SendProbe(candidate) => {
                debug!("probe {candidate}");
                if !self.send(ArpPacket::probe(mac, candidate)).await {
                    events.push_back(Event::ProbeNotSent);
                }
            }
            Action::SendAnnouncement(address) => {
                debug!("announce {address}");
                self.send(ArpPacket::announcement(mac, address)).await;
            }
            Action::ArmTimer(at) => self.deadline = Some(at),
            Action::CancelTimer => self.deadline = None,
            Action::Watch(address) => {
                if let Some(candidate) = address {
                    if self.machine.configured() != Some(candidate) {
                        info!("probing {candidate}");
                    }
                }
                self.arp
                    .set_filter(&filter::program(mac, address))
                    .map_err(Error::ArpFilter)?;
            }
            Action::Conflict { address, sender } => {
                info!("conflict: {} claims {address}", mac_text(&sender));
            }
            Action::Config(address) => {
                info!("config {} {address}", self.interface.name);
                self.run_script(Step::Config, address).await;
                ctx.status(&format!("{address} on {}", self.interface.name));
                if let Err(e) = self.last_address.save(address) {
                    warn!(
                        "cannot remember {address} in {}: {}",
                        self.last_address.path().display(),
                        io_text(&e)
                    );
                }
            }
            Action::Deconfig(address) => {
                info!("deconfig {} {address}", self.interface.name);
                self.run_script(Step::Deconfig, address).await;
                ctx.status(&format!("no address on {}", self.interface.name));
            }
            Action::Exit(Exit::Done) => return Ok(ControlFlow::Break(())),
            Action::Exit(Exit::InterfaceGone) => {
                return Err(Error::InterfaceGone(self.interface.name.clone()))
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Sends a packet; false (logged) if it did not leave.
    async fn send(&self, packet: ArpPacket) -> bool {
        match self.arp.broadcast(&packet.to_bytes()).await {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "cannot send an ARP packet on {}: {}",
                    self.interface.name,
                    io_text(&e)
                );
                false
            }
        }
    }

    async fn run_script(&self, step: Step, address: Ipv4Addr) {
        if let Err(e) = self.script.run(step, Some(address)).await {
            error!("{e}");
        }
    }
}

async fn sleep_until(start: Instant, at: Option<Duration>) {
    match at {
        Some(at) => tokio::time::sleep_until((start + at).into()).await,
        None => std::future::pending().await,
    }
}
