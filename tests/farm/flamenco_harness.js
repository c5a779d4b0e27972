// Runs a Flamenco job compiler script under Node.js against a stand-in for the Flamenco
// Manager's documented job-compiler interface, and prints what it authored as JSON.
//
//     node flamenco_harness.js <job_type.js> <settings.json> [job name]
//
// The interface, as Flamenco's Manager gives it to job types (its Goja VM, Go field names
// lower-cased): the globals `author` (`Task(name, type)`, `Command(name, parameters)`),
// `path` (`basename`, `dirname`, `join`, `stem`), `print`, `alert`, `frameChunker(range,
// size)`, `frameCount(range)`, `formatTimestampLocal(date)`, `shellSplit`; the script defines
// `JOB_TYPE` and `compileJob(job)`; `job` has `settings`, `name`, `created`, `addTask(task)`;
// a task has `addCommand(command)` and `addDependency(task)`. Errors the script throws are
// reported as {"error": ...}, as the Manager refuses such a job.
"use strict";

const fs = require("fs");
const nodePath = require("path");
const vm = require("vm");

const SETTING_TYPES = new Set(["string", "int32", "float", "bool"]);
const VISIBILITIES = new Set(["visible", "hidden", "submission", "web"]);
const SUBTYPES = new Set(["file_path", "dir_path", "hashed_file_path"]);

let nextTaskNumber = 0;

function makeTask(name, type) {
    name = `${name}`.trim();
    type = `${type}`.trim();
    if (!name) throw "author.Task(name, type): name is required";
    if (!type) throw "author.Task(name, type): type is required";
    return {
        uuid: `task-${++nextTaskNumber}`, name, type, priority: 50, commands: [], dependencies: [],
        addCommand(command) { this.commands.push(command); },
        addDependency(task) {
            if (!task || typeof task.uuid !== "string") throw "addDependency: not a task";
            this.dependencies.push(task);
        },
    };
}

// Frame ranges as Flamenco parses them: "1-10,20..25,40"; chunks in "regular" notation.
function explodeFrames(range) {
    const frames = new Set();
    for (const part of `${range}`.replaceAll("..", "-").split(",")) {
        const ends = part.split("-").map((text) => text.trim());
        if (ends.length > 2 || ends.some((text) => !/^-?\d+$/.test(text))) throw `invalid range "${range}"`;
        const [start, end] = [parseInt(ends[0], 10), parseInt(ends[ends.length - 1], 10)];
        for (let frame = start; frame <= end; frame++) frames.add(frame);
    }
    if (frames.size == 0) throw `invalid range "${range}": empty range`;
    return [...frames].sort((a, b) => a - b);
}

function mergeFrames(frames) {
    const ranges = [];
    let start = frames[0], previous = frames[0];
    const close = (from, to) => {
        if (from == to) ranges.push(`${from}`);
        else if (from + 1 == to) ranges.push(`${from}`, `${to}`);
        else ranges.push(`${from}-${to}`);
    };
    for (const frame of frames.slice(1)) {
        if (frame > previous + 1) {
            close(start, previous);
            start = frame;
        }
        previous = frame;
    }
    close(start, previous);
    return ranges.join(",");
}

function frameChunker(range, size) {
    if (!(size >= 1)) throw `invalid chunk size, must be positive number: ${size}`;
    const frames = explodeFrames(range);
    const chunks = [];
    for (let index = 0; index < frames.length; index += size) chunks.push(mergeFrames(frames.slice(index, index + size)));
    return chunks;
}

function formatTimestampLocal(date) {
    const pad = (value) => `${value}`.padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}_` +
        `${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
}

function checkJobType(jobType) {
    if (!jobType || typeof jobType.label !== "string" || !Array.isArray(jobType.settings)) {
        throw "does not define a proper JOB_TYPE object";
    }
    const keys = new Set();
    for (const setting of jobType.settings) {
        if (typeof setting.key !== "string" || keys.has(setting.key)) throw `bad or repeated setting key ${setting.key}`;
        keys.add(setting.key);
        if (!SETTING_TYPES.has(setting.type)) throw `setting ${setting.key}: unknown type ${setting.type}`;
        if (setting.visible !== undefined && !VISIBILITIES.has(setting.visible)) {
            throw `setting ${setting.key}: unknown visibility ${setting.visible}`;
        }
        if (setting.subtype !== undefined && !SUBTYPES.has(setting.subtype)) {
            throw `setting ${setting.key}: unknown subtype ${setting.subtype}`;
        }
        if (setting.eval !== undefined && typeof setting.eval !== "string") throw `setting ${setting.key}: eval must be text`;
    }
}

function run(scriptPath, settings, jobName) {
    const printed = [];
    const sandbox = {
        author: { Task: makeTask, Command: (name, parameters, totalStepCount) => ({ name, parameters, totalStepCount: totalStepCount || 0 }) },
        path: {
            basename: nodePath.posix.basename, dirname: nodePath.posix.dirname, join: nodePath.posix.join,
            stem: (file) => nodePath.posix.basename(file, nodePath.posix.extname(file)),
        },
        print: (...args) => printed.push(args.map((arg) => typeof arg === "string" ? arg : JSON.stringify(arg)).join(" ")),
        alert: (...args) => printed.push("ALERT " + args.join(" ")),
        frameChunker, frameCount: (range) => explodeFrames(range).length, formatTimestampLocal,
        shellSplit: (text) => text.split(/\s+/).filter(Boolean),
    };
    vm.createContext(sandbox);
    vm.runInContext(fs.readFileSync(scriptPath, "utf8") + "\n;this.JOB_TYPE = JOB_TYPE; this.compileJob = compileJob;",
                    sandbox, { filename: scriptPath });
    checkJobType(sandbox.JOB_TYPE);
    const tasks = [];
    const job = {
        name: jobName, settings, created: new Date(2026, 0, 2, 3, 4, 5), priority: 50, metadata: {},
        addTask(task) { tasks.push(task); },
    };
    let error = null;
    try {
        sandbox.compileJob(job);
    } catch (thrown) {
        error = `${thrown}`;
    }
    const added = new Set(tasks.map((task) => task.uuid));
    return {
        jobType: JSON.parse(JSON.stringify(sandbox.JOB_TYPE)),
        settings: job.settings,
        error,
        printed,
        tasks: tasks.map((task) => ({
            name: task.name, type: task.type,
            commands: task.commands.map((command) => ({ name: command.name, parameters: command.parameters })),
            dependencies: task.dependencies.map((dependency) => {
                if (!added.has(dependency.uuid)) throw `task "${task.name}" depends on a task never added to the job`;
                return dependency.name;
            }),
        })),
    };
}

if (require.main === module) {
    const [scriptPath, settingsPath, jobName] = process.argv.slice(2);
    const settings = JSON.parse(fs.readFileSync(settingsPath, "utf8"));
    process.stdout.write(JSON.stringify(run(scriptPath, settings, jobName || "silk job")));
}

module.exports = { run, frameChunker };
