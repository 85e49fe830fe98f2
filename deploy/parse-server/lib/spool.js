'use strict';
// The append-only spool file: work items survive a Parse Server restart until RabbitMQ confirmed them.
//
// One line per event: `P <json {seq, channel, message}>` when Parse hands an item over, `A <seq>` when
// RabbitMQ confirmed it. Replay = every P without its A, in file order. Compaction rewrites the file
// with only those (write to a temp file, fsync, rename), so it never grows beyond the backlog for long.
// One spool directory per Parse Server process: two processes appending to one file would replay
// each other's items.

const fs = require('fs');
const path = require('path');

const COMPACT_EVERY = 1000;

class Spool {
  constructor(directory, name) {
    fs.mkdirSync(directory, { recursive: true });
    this.file = path.join(directory, `${name}.spool`);
    this.confirmedSinceCompaction = 0;
  }

  /** The items not yet confirmed, oldest first: `[{seq, channel, message}]`. */
  replay() {
    let text = '';
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (error) {
      if (error.code !== 'ENOENT') throw error;
    }
    const pending = new Map();
    for (const line of text.split('\n')) {
      if (line.startsWith('P ')) {
        try {
          const item = JSON.parse(line.slice(2));
          pending.set(item.seq, item);
        } catch (_) {
          // a line torn by a crash mid-write: the item was never acknowledged to anyone
        }
      } else if (line.startsWith('A ')) {
        pending.delete(Number(line.slice(2)));
      }
    }
    return [...pending.values()];
  }

  append(item) {
    fs.appendFileSync(this.file, `P ${JSON.stringify(item)}\n`);
  }

  confirm(seq, remaining) {
    fs.appendFileSync(this.file, `A ${seq}\n`);
    this.confirmedSinceCompaction += 1;
    if (remaining.length === 0 || this.confirmedSinceCompaction >= COMPACT_EVERY) this.compact(remaining);
  }

  compact(remaining) {
    const temporary = `${this.file}.tmp`;
    const lines = remaining.map(item => `P ${JSON.stringify(item)}\n`).join('');
    const fd = fs.openSync(temporary, 'w');
    try {
      fs.writeSync(fd, lines);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temporary, this.file);
    this.confirmedSinceCompaction = 0;
  }
}

module.exports = { Spool };
