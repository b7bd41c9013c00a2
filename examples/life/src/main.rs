//! The multiplayer Game of Life: every room is a `GameRoom` object holding a 64×48 grid whose
//! edges wrap. Players connect a WebSocket and send cells; while a room has players it ticks
//! every 500 ms on its alarm and broadcasts each generation; when the last player leaves it
//! stops ticking, and soon its database closes. A `Lobby` object lists the rooms.
//!
//! `GameRoom` (under `/objects/GameRoom/name/{room}`):
//!
//! | route | what |
//! |---|---|
//! | `GET /ws` with `Upgrade: websocket` | joins the room; the socket gets the current generation at once, then every new one |
//! | `GET /state` | the current generation as JSON |
//! | `POST /cells` `{"cells": [[x, y], …]}` | brings cells to life, as a player's message does |
//!
//! On a socket, a player sends `{"cells": [[x, y], …]}` (at most 4096 cells; cells off the grid
//! are ignored). Every frame the room sends is `{"generation": g, "cells": [[x, y], …]}` (live
//! cells, sorted), with `"players": n` when the room counted its sockets for it. The room
//! registers itself with the lobby when a player joins and when its number of players changes.
//!
//! `Lobby` (the one named `main`, under `/objects/Lobby/name/main`):
//!
//! | route | what |
//! |---|---|
//! | `GET /rooms` | `{"rooms": [{"name", "players", "updated_ms"}]}`: the 50 fullest rooms, by name |
//! | `POST /rooms` `{"name": "r"}` | adds room `r` with no players (names: 1 to 64 of `A-Z a-z 0-9 _ -`); an existing room is left as it is |
//!
//! Only a room reports its own players (`{"name": "r", "players": n}`): the lobby checks the
//! `stead-caller` the sidecar sets on object calls, so a client's `players` gets 403. At most 64
//! rooms without players are kept, and one without news for 10 minutes drops off the list, so
//! rooms added in bulk can neither hide the rooms people play in nor grow the lobby without end.
//!
//! Stateless: `GET /` serves the game page (`?room=name` joins that room; `main` by default).

mod grid;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use stead_sdk::http::{Method, StatusCode};
use stead_sdk::{
    AlarmInfo, App, DurableObject, Error, ListOptions, Message, ObjectAddr, ObjectInfo, Request,
    RequestExt, Response, ResponseExt, Result, StatelessContext, Storage, Turn, WebSocketInfo,
    async_trait, now_ms, response,
};

use grid::{Grid, HEIGHT, WIDTH};

/// Time between two generations while a room has players.
const TICK: Duration = Duration::from_millis(500);
/// Most cells in one message.
const MAX_CELLS_PER_MESSAGE: usize = 4096;
/// The lobby object's name.
const LOBBY: &str = "main";
/// KV key of a room's grid.
const GRID_KEY: &str = "grid";

const PAGE: &str = include_str!("index.html");

/// What a room sends its sockets.
#[derive(Serialize)]
struct Frame<'a> {
    generation: u64,
    cells: &'a std::collections::BTreeSet<[u16; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    players: Option<usize>,
    width: u16,
    height: u16,
}

/// What a player sends.
#[derive(Deserialize)]
struct Input {
    cells: Vec<[i64; 2]>,
}

fn valid_room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct GameRoom {
    /// The grid, loaded on first use (memory mirrors storage: the SDK rebuilds the instance if
    /// a turn rolls back).
    grid: Option<Grid>,
    /// The number of players last reported to the lobby.
    reported_players: Option<usize>,
}

impl GameRoom {
    async fn grid(&mut self, storage: &Storage) -> Result<&mut Grid> {
        if self.grid.is_none() {
            self.grid = Some(storage.get::<Grid>(GRID_KEY).await?.unwrap_or_default());
        }
        Ok(self.grid.get_or_insert_with(Grid::default))
    }

    fn frame(&self, players: Option<usize>) -> Result<Message> {
        let grid = self
            .grid
            .as_ref()
            .ok_or_else(|| Error::msg("the grid is not loaded"))?;
        Message::json(&Frame {
            generation: grid.generation,
            cells: &grid.cells,
            players,
            width: WIDTH,
            height: HEIGHT,
        })
    }

    /// Adds the cells of a player's `input`, stores the grid, and shows it to every player.
    async fn add_cells(&mut self, turn: &Turn, input: &Input) -> Result<usize> {
        let storage = turn.storage();
        let grid = self.grid(&storage).await?;
        let added = grid.add(&input.cells);
        if added > 0 {
            storage.put(GRID_KEY, grid).await?;
            let frame = self.frame(None)?;
            turn.websockets().broadcast_all(frame).await?;
        }
        Ok(added)
    }

    /// Makes sure the room ticks.
    async fn keep_ticking(turn: &Turn) -> Result<()> {
        let alarm = turn.alarm();
        if alarm.get().await?.is_none() {
            alarm.set_in(TICK).await?;
        }
        Ok(())
    }

    /// Tells the lobby how many players this room has, if that changed. A lobby that cannot be
    /// reached does not stop the game.
    async fn report_players(&mut self, turn: &Turn, players: usize) {
        if self.reported_players == Some(players) {
            return;
        }
        let Some(name) = turn.name() else { return };
        let body = json!({ "name": name, "players": players }).to_string();
        match turn
            .stub("Lobby", ObjectAddr::name(LOBBY))
            .post("/rooms", body)
            .await
        {
            Ok(res) => {
                if !res.status().is_success() {
                    tracing::warn!(room = name, status = %res.status(), "the lobby refused the room");
                }
                // Reported (or refused for good): do not ask again until the count changes.
                self.reported_players = Some(players);
            }
            Err(e) => tracing::warn!(room = name, error = %e, "cannot reach the lobby"),
        }
    }
}

#[async_trait]
impl DurableObject for GameRoom {
    fn new(_object: &ObjectInfo) -> Self {
        GameRoom {
            grid: None,
            reported_players: None,
        }
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/state") => {
                self.grid(&turn.storage()).await?;
                let frame = self.frame(None)?;
                Ok(response::text(frame.as_text().unwrap_or_default())
                    .with_header(stead_sdk::http::header::CONTENT_TYPE, "application/json"))
            }
            (&Method::POST, "/cells") => {
                let input: Input = match req.json() {
                    Ok(i) => i,
                    Err(e) => {
                        return Ok(response::error(
                            StatusCode::BAD_REQUEST,
                            "invalid_json",
                            &format!("expected {{\"cells\": [[x, y], …]}}: {e}"),
                        ));
                    }
                };
                let added = self.add_cells(turn, &input).await?;
                Ok(response::json(&json!({ "added": added })))
            }
            (&Method::GET, "/ws") => Ok(response::error(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "connect a WebSocket here",
            )),
            (method, path) => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("a game room has no route {method} {path}"),
            )),
        }
    }

    async fn websocket_connect(
        &mut self,
        turn: &Turn,
        req: Request,
        ws: WebSocketInfo,
    ) -> Result<Response> {
        if req.uri().path() != "/ws" {
            return Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "a game room's socket is at /ws",
            ));
        }
        let sockets = turn.websockets();
        // Whether or not the sidecar lists the socket being accepted, count it once.
        let others = sockets
            .list(None)
            .await?
            .iter()
            .filter(|s| s.id != ws.id)
            .count();
        self.grid(&turn.storage()).await?;
        sockets.send(&ws.id, self.frame(Some(others + 1))?).await?;
        Self::keep_ticking(turn).await?;
        self.report_players(turn, others + 1).await;
        response::accept_websocket_with_tags(&["player"])
    }

    async fn websocket_message(&mut self, turn: &Turn, ws_id: &str, msg: Message) -> Result<()> {
        let input = match msg.parse_json::<Input>() {
            Ok(input) if input.cells.len() <= MAX_CELLS_PER_MESSAGE => input,
            Ok(_) => {
                let error = format!("at most {MAX_CELLS_PER_MESSAGE} cells per message");
                turn.websockets()
                    .send_json(ws_id, &json!({ "error": error }))
                    .await?;
                return Ok(());
            }
            Err(e) => {
                let error = format!("expected {{\"cells\": [[x, y], …]}}: {e}");
                turn.websockets()
                    .send_json(ws_id, &json!({ "error": error }))
                    .await?;
                return Ok(());
            }
        };
        self.add_cells(turn, &input).await?;
        Self::keep_ticking(turn).await
    }

    /// One generation: while the room has players, step, store, broadcast, and set the next
    /// tick; with none, stop (the alarm is cleared because no new one is set).
    async fn alarm(&mut self, turn: &Turn, _info: AlarmInfo) -> Result<()> {
        let players = turn.websockets().list(None).await?.len();
        if players == 0 {
            self.report_players(turn, 0).await;
            return Ok(());
        }
        let storage = turn.storage();
        let grid = self.grid(&storage).await?;
        grid.step();
        storage.put(GRID_KEY, grid).await?;
        let frame = self.frame(Some(players))?;
        turn.websockets().broadcast_all(frame).await?;
        turn.alarm().set_in(TICK).await?;
        self.report_players(turn, players).await;
        Ok(())
    }
}

/// A room as the lobby lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomEntry {
    name: String,
    players: usize,
    updated_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    name: String,
    players: Option<usize>,
}

/// Rooms the lobby lists, the fullest first.
const LIST_LIMIT: usize = 50;
/// Rooms without players that the lobby keeps; registering one more forgets the oldest.
const MAX_EMPTY_ROOMS: usize = 64;
/// A room without players drops off the list after this long without news.
const EMPTY_ROOM_TTL_MS: i64 = 10 * 60 * 1000;
/// Most players a room can report: the sidecar's bound on sockets per object.
const MAX_PLAYERS: usize = 32_768;

/// The lobby. Anyone may add a room by name (it starts with no players), but only the room
/// itself reports its players: the sidecar marks object calls with the calling object
/// (`stead-caller`), which clients cannot forge. Rooms with players are listed first, so empty
/// rooms added in bulk cannot hide them, and at most `MAX_EMPTY_ROOMS` empty rooms are kept.
struct Lobby;

impl Lobby {
    async fn rooms(storage: &Storage) -> Result<Vec<RoomEntry>> {
        let rooms: Vec<(String, RoomEntry)> = storage.list(ListOptions::prefix("room:")).await?;
        Ok(rooms.into_iter().map(|(_, r)| r).collect())
    }

    /// Forgets empty rooms that are stale, and the oldest empty ones past `keep`.
    async fn prune(storage: &Storage, rooms: &[RoomEntry], keep: usize) -> Result<()> {
        let now = now_ms();
        let mut empty: Vec<&RoomEntry> = rooms.iter().filter(|r| r.players == 0).collect();
        empty.sort_by_key(|r| std::cmp::Reverse(r.updated_ms));
        let doomed: Vec<String> = empty
            .iter()
            .enumerate()
            .filter(|(i, r)| *i >= keep || now - r.updated_ms > EMPTY_ROOM_TTL_MS)
            .map(|(_, r)| format!("room:{}", r.name))
            .collect();
        if !doomed.is_empty() {
            storage.delete_many(&doomed).await?;
        }
        Ok(())
    }

    async fn register(turn: &Turn, req: &Request) -> Result<Response> {
        let storage = turn.storage();
        let reg: Register = match req.json() {
            Ok(r) => r,
            Err(e) => {
                return Ok(response::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("expected {{\"name\": \"room\"}}: {e}"),
                ));
            }
        };
        if !valid_room_name(&reg.name) {
            return Ok(response::error(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                "a room name has 1 to 64 characters among A-Z a-z 0-9 _ -",
            ));
        }
        let from_room = req
            .caller()
            .is_some_and(|c| c.is_named("GameRoom", &reg.name));
        if reg.players.is_some() && !from_room {
            return Ok(response::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the room itself reports its players; register a room with {\"name\": \"room\"}",
            ));
        }
        if reg.players.is_some_and(|p| p > MAX_PLAYERS) {
            return Ok(response::error(
                StatusCode::BAD_REQUEST,
                "invalid_players",
                &format!("a room has at most {MAX_PLAYERS} players"),
            ));
        }
        let key = format!("room:{}", reg.name);
        let existing = storage.get::<RoomEntry>(&key).await?;
        if existing.is_some() && !from_room {
            // Clients may only add rooms; what the lobby knows of a room comes from the room.
            return Ok(response::json(&existing).with_status(StatusCode::OK));
        }
        let created = existing.is_none();
        let entry = RoomEntry {
            players: reg.players.or(existing.map(|e| e.players)).unwrap_or(0),
            name: reg.name,
            updated_ms: now_ms(),
        };
        storage.put(&key, &entry).await?;
        if entry.players == 0 {
            // Room for this one among the empty rooms kept.
            let rooms = Self::rooms(&storage).await?;
            Self::prune(&storage, &rooms, MAX_EMPTY_ROOMS).await?;
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(response::json(&entry).with_status(status))
    }
}

#[async_trait]
impl DurableObject for Lobby {
    fn new(_object: &ObjectInfo) -> Self {
        Lobby
    }

    async fn fetch(&mut self, turn: &Turn, req: Request) -> Result<Response> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/rooms") => {
                let now = now_ms();
                let mut rooms: Vec<RoomEntry> = Self::rooms(&turn.storage())
                    .await?
                    .into_iter()
                    .filter(|r| r.players > 0 || now - r.updated_ms <= EMPTY_ROOM_TTL_MS)
                    .collect();
                rooms.sort_by(|a, b| {
                    b.players
                        .cmp(&a.players)
                        .then(b.updated_ms.cmp(&a.updated_ms))
                });
                rooms.truncate(LIST_LIMIT);
                rooms.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(response::json(&json!({ "rooms": rooms })))
            }
            (&Method::POST, "/rooms") => Self::register(turn, &req).await,
            (method, path) => Ok(response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("the lobby has no route {method} {path}"),
            )),
        }
    }
}

async fn front_door(req: Request, _ctx: StatelessContext) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/" | "/index.html") => response::text(PAGE).with_header(
            stead_sdk::http::header::CONTENT_TYPE,
            "text/html; charset=utf-8",
        ),
        (method, path) => response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {method} {path}; the game is at /"),
        ),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let app = App::new()
        .class::<Lobby>("Lobby")
        .class::<GameRoom>("GameRoom")
        .stateless(front_door);
    if let Err(e) = app.serve().await {
        tracing::error!(error = %e, "life app failed");
        std::process::exit(1);
    }
}
