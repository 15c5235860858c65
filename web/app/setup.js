// Device setup: create a device (or give an existing one new credentials) and show, once, what
// to enter in each client app, with QR codes (lean-qr from npm, drawn on a canvas) where an app
// can read its configuration from one. The secrets are only in this page's memory: leaving the
// page forgets them, and the API never shows them again.

import { json } from './api.js';
import { h, fill } from './dom.js';

let qr = null;
async function qrCanvas(text) {
  try {
    qr = qr || (await import('/vendor/lean-qr.mjs'));
    const canvas = h('canvas', { class: 'qr' });
    qr.generate(text).toCanvas(canvas);
    return canvas;
  } catch (e) {
    return h('div', { class: 'note' }, 'QR code unavailable (run npm ci in web/).');
  }
}

/** PATCH the device's speed unit to m/s (what the OsmAnd app sends). */
function speedUnitButton(device) {
  const status = h('span', { class: 'note' });
  return h('div', { class: 'row' },
    h('button', { type: 'button', class: 'small', id: 'setup-osmand-mps', onclick: async () => {
      try {
        await json(`/v1/devices/${device.id}`, { method: 'PATCH', body: { speed_unit: 'mps' } });
        fill(status, 'speed unit: m/s');
      } catch (e) {
        fill(status, `not changed: ${e.message}`);
      }
    } }, 'Use m/s for this device'),
    status);
}

function copyable(label, value, id) {
  return h('div', { class: 'field' },
    h('span', { class: 'label' }, label),
    h('code', { id }, value),
    h('button', { type: 'button', class: 'small', onclick: () => navigator.clipboard && navigator.clipboard.writeText(value) }, 'Copy'));
}

/** The instructions for one device's credentials: a list of sections, one per client app. */
export async function instructions(config, device, token, udpKey) {
  const ingest = config.ingest_url.replace(/\/$/, '');
  const q = encodeURIComponent;
  // As docs/devices.md: OsmAnd's {3} is accuracy in metres and {5} speed in m/s.
  const osmand = `${ingest}/?id=${q(device.uid)}&token=${q(token)}&lat={0}&lon={1}&timestamp={2}&accuracy={3}&altitude={4}&speed={5}&bearing={6}`;
  const traccar = `${ingest}/?token=${q(token)}`;
  const owntracksConfig = {
    _type: 'configuration', mode: 3, url: `${ingest}/owntracks`, auth: true,
    username: device.uid, password: token, deviceId: device.uid.slice(0, 32),
  };
  const owntracks = `owntracks:///config?inline=${btoa(unescape(encodeURIComponent(JSON.stringify(owntracksConfig))))}`;
  const now = new Date().toISOString();
  const curl = `curl -X POST ${ingest}/v1/fixes -H 'authorization: Bearer ${token}' -H 'content-type: application/json' \\\n  -d '{"time":"${now}","lat":52.52,"lon":13.405,"speed":12.5,"heading":270}'`;
  const section = (title, intro, fields, qrText, qrNote) => h('section', { class: 'app' },
    h('h3', {}, title), h('p', {}, intro), ...fields,
    qrText ? h('div', { class: 'qr-box' }, qrText, h('p', { class: 'note' }, qrNote)) : null);
  return [
    section('Traccar Client', 'Settings → Device identifier and Server URL:',
      [copyable('Device identifier', device.uid, 'setup-traccar-id'), copyable('Server URL', traccar, 'setup-traccar-url')],
      await qrCanvas(traccar), 'The server URL as a QR code.'),
    section('OsmAnd', 'Plugins → Trip recording → Online tracking web address. OsmAnd sends speed in m/s: set the device\'s speed unit to m/s.',
      [copyable('Web address', osmand, 'setup-osmand-url'), speedUnitButton(device)],
      await qrCanvas(osmand), 'The web address as a QR code.'),
    section('OwnTracks', 'Preferences → Connection: mode HTTP, this URL, user = device uid, password = token; or scan the QR code (OwnTracks reads its whole configuration from it).',
      [copyable('URL', `${ingest}/owntracks`, 'setup-owntracks-url'), copyable('Username', device.uid, 'setup-owntracks-user'), copyable('Password', token, 'setup-owntracks-password')],
      await qrCanvas(owntracks), 'OwnTracks configuration (owntracks:///config).'),
    section('JSON API', 'POST fixes with the device token as a bearer token (docs/ingest.md):',
      [copyable('Token', token, 'setup-token'), h('pre', {}, curl)]),
    udpKey
      ? section('UDP', 'Binary datagrams, HMAC-SHA256 with the UDP key (docs/udp.md):',
        [copyable('Address', config.udp_addr, 'setup-udp-addr'), copyable('Device id', device.id, 'setup-udp-device'), copyable('UDP key (hex)', udpKey, 'setup-udp-key')])
      : null,
  ];
}

export function renderSetup(panel, config, onCreated) {
  const uid = h('input', { name: 'uid', id: 'setup-uid', required: true, maxlength: 128, placeholder: 'e.g. 358240051111110' });
  const name = h('input', { name: 'name', id: 'setup-name', maxlength: 200, placeholder: 'e.g. van 7' });
  const status = h('div', { class: 'status', id: 'setup-status' });
  const result = h('div', { id: 'setup-result' });
  fill(panel,
    h('h2', {}, 'Set up a device'),
    h('form', { class: 'stack', onsubmit: async (e) => {
      e.preventDefault();
      fill(status, 'Creating…');
      try {
        const body = await json('/v1/devices', { method: 'POST', body: { uid: uid.value.trim(), name: name.value.trim() } });
        fill(status, 'Created. The token and UDP key are shown once: enter them now.');
        await showCredentials(result, config, body.device, body.token, body.udp_key);
        onCreated(body.device);
      } catch (err) {
        fill(status, `Could not create the device: ${err.message}`);
      }
    } },
    h('label', {}, 'Device uid (IMEI or identifier)', uid),
    h('label', {}, 'Name', name),
    h('button', { type: 'submit', id: 'setup-create' }, 'Create device')),
    status,
    result);
}

export async function showCredentials(target, config, device, token, udpKey) {
  fill(target,
    h('p', { class: 'warning' }, 'Shown once: the API stores only digests. Rotate to get new ones.'),
    ...(await instructions(config, device, token, udpKey)));
}
